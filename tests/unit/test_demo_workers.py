"""Which worker processes `rendezvous demo` (and the benches' stack) start for their models."""

from __future__ import annotations

import argparse
import os

import pytest

from services.cli.demo import DemoSettings
from services.cli.spawn import model_workers
from services.core.settings import add_arguments, from_namespace

MODELS = (("champion", "demo:champion"), ("challenger", "demo:challenger"), ("canary", "demo:canary"))


def test_one_worker_per_model_by_default() -> None:
    workers = model_workers(MODELS, co_host=False)
    assert workers == {
        "champion": ["model", "serve", "--model", "demo:champion", "--name", "champion"],
        "challenger": ["model", "serve", "--model", "demo:challenger", "--name", "challenger"],
        "canary": ["model", "serve", "--model", "demo:canary", "--name", "canary"],
    }


def test_co_host_puts_every_model_in_one_worker_named_as_its_group() -> None:
    workers = model_workers(MODELS, co_host=True)
    assert workers == {"champion+challenger+canary": [
        "model", "serve", "--model", "demo:champion", "--name", "champion",
        "--co-host", "challenger=demo:challenger,canary=demo:canary"]}


def test_co_host_with_one_model_is_a_plain_worker() -> None:
    workers = model_workers(MODELS[:1], co_host=True)
    assert workers == {"champion": ["model", "serve", "--model", "demo:champion", "--name", "champion"]}


@pytest.mark.parametrize(
    ("cpus", "co_hosted"), [(1, True), (2, True), (3, True), (4, False), (16, False), (None, True)]
)
def test_the_demo_co_hosts_its_models_on_a_small_machine_unless_told(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, co_hosted: bool
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert DemoSettings().co_hosted() is co_hosted
    assert DemoSettings(co_host=True).co_hosted() is True
    assert DemoSettings(co_host=False).co_hosted() is False


@pytest.mark.parametrize(("flag", "env", "expected"), [
    ([], None, None), (["--co-host"], None, True), (["--no-co-host"], None, False),
    ([], "false", False), ([], "yes", True), (["--co-host"], "false", True),
])  # fmt: skip
def test_the_demo_co_host_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, flag: list[str], env: str | None, expected: bool | None
) -> None:
    if env is None:
        monkeypatch.delenv("RDV_CO_HOST", raising=False)
    else:
        monkeypatch.setenv("RDV_CO_HOST", env)
    parser = argparse.ArgumentParser()
    add_arguments(parser, DemoSettings)
    assert from_namespace(DemoSettings, parser.parse_args(flag)).co_host is expected

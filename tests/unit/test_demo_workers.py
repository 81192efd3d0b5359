"""Which worker processes `rendezvous demo` (and the benches' stack) start for their models."""

from __future__ import annotations

from services.cli.spawn import model_workers

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

"""Misconfigurations a probe of every command found passing, hanging or saying too much: each is
one line now (services/core/settings.py, registry.py, control/schedule.py, gateway/auth.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.core.errors import ConfigError
from services.core.settings import from_namespace


def test_a_registry_url_that_does_not_parse_is_refused_without_quoting_its_password() -> None:
    """A password holding '/' made urllib read part of it as the port, and its words quoted it."""
    from services.core.registry import SchemaRegistry
    from services.core.urls import shown_url_safely

    with pytest.raises(ConfigError) as refused:
        SchemaRegistry("http://alice:S3C/RETpw@127.0.0.1:1")
    assert "S3C" not in str(refused.value) and "RETpw" not in str(refused.value)
    assert "percent-encoded" in str(refused.value)
    assert shown_url_safely("http://127.0.0.1:1/?token=S3CRETtok") == "http://127.0.0.1:1/?***"


@pytest.mark.parametrize("url", ["http://reg:8081/?token=S3CRETtok", "http://reg:8081#S3CRETtok",
                                 "reg:8081?token=S3CRETtok"])
def test_a_registry_url_with_a_query_is_refused_and_its_token_never_shown(url: str) -> None:
    """The query was masked in the parse error only: the start-up line and every registry error
    showed it (the re-read of the change); and the call's path appended after it, it never reached
    the registry as a query."""
    from services.core.registry import SchemaRegistry

    with pytest.raises(ConfigError) as refused:  # as every command sets up its wire format, before its first log line
        SchemaRegistry(url)
    assert "S3CRETtok" not in str(refused.value) and "?***" in str(refused.value)


def test_a_schedule_file_that_is_a_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    from services.control.schedule import Schedule

    pipe = tmp_path / "schedule.json"
    os.mkfifo(pipe)
    with pytest.raises(ConfigError, match=r"cannot read schedule file .*: is not a regular file"):
        Schedule.from_file(pipe)


def test_an_empty_metrics_host_is_refused_not_bound_on_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.decoy.settings import DecoySettings

    monkeypatch.setenv("RDV_METRICS_HOST", "")
    with pytest.raises(ConfigError, match=r"RDV_METRICS_HOST \(the environment.s --metrics-host\) is empty"):
        from_namespace(DecoySettings)


def test_a_blank_list_of_api_key_hashes_is_refused_not_read_as_no_keys() -> None:
    """' , ' started a gateway that let every caller in; an empty key file was already refused."""
    from services.gateway.auth import ApiKeys

    with pytest.raises(ConfigError, match="--api-key-hashes holds no key"):
        ApiKeys.load("", (" ", ""))
    assert not ApiKeys.load("", ()).enabled  # not given at all: no authentication, as documented


@pytest.mark.parametrize(("variable", "flag"), [
    ("RDV_TLS_CERT", "--tls-cert"), ("RDV_TLS_KEY", "--tls-key"), ("RDV_API_KEYS_FILE", "--api-keys-file"),
])
def test_a_blank_tls_or_key_file_for_the_gateway_is_refused_not_read_as_none(
    monkeypatch: pytest.MonkeyPatch, variable: str, flag: str
) -> None:
    """RDV_TLS_CERT=$CERT with $CERT unset served plain HTTP and gRPC, and a blank key file let
    every caller in, without a word (a review)."""
    from services.gateway.settings import GatewaySettings

    monkeypatch.setenv(variable, " ")
    with pytest.raises(ConfigError, match=rf"{variable} \(the environment's {flag}\) is empty: name the"):
        from_namespace(GatewaySettings)


def test_a_sasl_user_name_is_not_masked_in_every_line_but_its_password_is() -> None:
    """Masked as a secret, a plain-word user name garbled the very errors that name a missing grant:
    'not authorized to join group rdv.***' for the user 'rendezvous' (a review)."""
    from services.core.kafka_config import masked, parse
    from services.core.redaction import mask

    config = parse(["sasl.username=rendezvous", "sasl.password=Pa55wordOfOurs", "security.protocol=SASL_SSL",
                    "sasl.mechanism=SCRAM-SHA-512"])
    line = mask("not authorized to join group rdv.rendezvous as rendezvous with Pa55wordOfOurs")
    assert line == "not authorized to join group rdv.rendezvous as rendezvous with ***"
    # The start-up line shows neither.
    assert masked(config) == {"sasl.username": "***", "sasl.password": "***", "security.protocol": "SASL_SSL",
                              "sasl.mechanism": "SCRAM-SHA-512"}


def test_a_kafka_config_item_with_a_semicolon_names_no_secret_when_the_demo_cannot_hand_it_on() -> None:
    """Its key was shown, and an item without '=' is all value: a password typed as
    'hunter2Secret;sasl.mechanism=PLAIN' was printed whole (a review)."""
    from services.cli.spawn import service_env
    from services.core.settings import KafkaSettings

    settings = KafkaSettings(kafka_config=("security.protocol=SASL_SSL", "hunter2Secret;sasl.mechanism=PLAIN",
                                           "sasl.password=a;b"))
    with pytest.raises(ConfigError) as refused:
        service_env(settings)
    assert "hunter2Secret" not in str(refused.value)
    assert str(refused.value).startswith("--kafka-config item 2, sasl.password: a value holding ';'")


def test_the_rescue_process_masks_the_kafka_secrets_it_is_handed() -> None:
    from services.core.kafka_config import remember_secrets
    from services.core.redaction import mask

    remember_secrets({"bootstrap.servers": "b:9092", "sasl.password": "RescuePassw0rd", "sasl.username": "worker"})
    assert mask("auth as worker with RescuePassw0rd failed") == "auth as worker with *** failed"


@pytest.mark.parametrize(("items", "said"), [
    (["sasl.username=u", "sasl.password=Secret1"], "sasl.password, sasl.username given with "
     "security.protocol=plaintext, which uses no SASL"),
    (["ssl.ca.location=/ca.pem"], "ssl.ca.location given with security.protocol=plaintext, which uses no TLS"),
    (["security.protocol=SSL", "sasl.password=Secret1"], "security.protocol=ssl, which uses no SASL"),
    (["security.protocol=SASL_PLAINTEXT", "sasl.mechanism=PLAIN", "ssl.ca.location=/ca.pem"],
     "ssl.ca.location given with security.protocol=sasl_plaintext, which uses no TLS"),
    (["security.protocol=SSL", "ssl.certificate.location=/c.pem"], "a client certificate needs its key"),
    (["security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512", "sasl.mechanisms=PLAIN"],
     r"item 3 \(sasl.mechanisms\): it names the setting sasl.mechanism names"),
    (["security.protocol=SASL_PLAINTEXT", "sasl.username=u", "sasl.password=Secret1"],
     "security.protocol=sasl_plaintext given without sasl.mechanism: set sasl.mechanism=PLAIN"),
])
def test_kafka_security_settings_that_librdkafka_would_ignore_or_override_are_refused(
    items: list[str], said: str
) -> None:
    """Credentials or a CA given without the protocol that uses them ran a command in plaintext,
    or as no user, without a word; of two aliases (sasl.mechanisms after sasl.mechanism) the last
    won, a password then sent in clear by PLAIN (a review)."""
    from services.core.kafka_config import parse

    with pytest.raises(ConfigError, match=said) as refused:
        parse(items)
    assert "Secret1" not in str(refused.value)


def test_consistent_kafka_security_settings_are_taken() -> None:
    from services.core.kafka_config import parse

    for items in (["security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512", "sasl.username=u",
                   "sasl.password=p", "ssl.ca.location=/ca.pem"],
                  ["security.protocol=ssl", "ssl.certificate.location=/c.pem", "ssl.key.location=/k.pem"],
                  ["acks=all", "linger.ms=5"]):
        assert len(parse(items)) == len(items)

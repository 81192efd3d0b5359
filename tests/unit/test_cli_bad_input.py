"""Bad values given to the commands: each is a one-line ConfigError, before anything starts (a
review of the CLI found these accepted, or failing late, or failing with a traceback)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from rich.console import Console

from services.cli.demo import DemoSettings
from services.cli.deploy import DeploySettings
from services.cli.lifecycle import PromoteSettings, ScheduleSetSettings
from services.cli.replay import ReplaySettings
from services.compare_report.settings import CompareSettings
from services.comparison.settings import ComparisonSettings
from services.control.schedule import Schedule
from services.control.topic import ScheduleBook
from services.core.errors import BrokerUnavailable, ConfigError
from services.core.settings import KafkaSettings, Topics, from_namespace
from services.decoy.settings import DecoySettings
from services.gateway.settings import GatewaySettings
from services.model_worker.settings import WorkerSettings
from services.rendezvous.settings import RendezvousSettings

NO_BROKER = "127.0.0.1:1"  # nothing listens there


@pytest.mark.parametrize(("cls", "values", "says"), [
    (RendezvousSettings, {"metrics_port": "70000"}, "--metrics-port must be at most 65535"),
    (GatewaySettings, {"grpc_port": "70000"}, "--grpc-port must be at most 65535"),  # it bound another port
    (RendezvousSettings, {"max_batch": "0"}, "--max-batch must be at least 1"),
    (DemoSettings, {"models": "x=demo:nope"}, "unknown demo model 'demo:nope'"),
    (DemoSettings, {"partitions": "0"}, "--partitions must be at least 1, got 0"),  # it blamed --rendezvous
    # Both passed; the ports' bind raised OverflowError once the broker ran: a traceback (a review).
    (DemoSettings, {"partitions": "2147483647"}, "--partitions must be at most 10000"),
    (DemoSettings, {"metrics_base_port": "65435", "partitions": "200", "rendezvous": "100"},
     "--metrics-base-port 65435 leaves no room for the metrics ports of 100 rendezvous and 3 models (the last"),
    # Each said one form only (a duration, or a time and an offset it refuses).
    (WorkerSettings, {"model": "demo:champion", "start_at": "yesterday"}, "expected a time (ISO like"),
    (WorkerSettings, {"model": "demo:champion", "start_at": "2024-13-01"}, "or a duration ago (90s, 10m, 2h)"),
    (DemoSettings, {"rate": "0"}, "--rate must be above 0, got 0"),
    # -5 said "must be at least 0", 0 then "must be positive": the bound told is the one that holds.
    # Each was waited on for 15 s, then blamed on no broker answering ("or pass --bootstrap").
    (RendezvousSettings, {"bootstrap": ",,,"}, "--bootstrap ',,,': expected host:port entries"),
    (RendezvousSettings, {"bootstrap": "127.0.0.1:29743:"}, "got '127.0.0.1:29743:'"),
    (RendezvousSettings, {"bootstrap": "a:9092,b:port"}, "got 'b:port'"),
    (RendezvousSettings, {"bootstrap": "a:99999"}, "got 'a:99999'"),
    # librdkafka skipped the entry without a word: no broker answered, 15 s later (a review).
    (RendezvousSettings, {"bootstrap": "http://127.0.0.1:9092"}, "http:// is no Kafka security protocol"),
    (RendezvousSettings, {"bootstrap": "a:9092,kafka://b:9092"}, "kafka:// is no Kafka security protocol"),
    # librdkafka skipped the entry: "does not match security.protocol" (a review of the check above).
    (RendezvousSettings, {"bootstrap": "SSL://b:9093"}, "SSL:// is not the security.protocol the client uses "
                                                        "(plaintext): set --kafka-config security.protocol=SSL"),
    # Taken for a host name, the password shown in the start-up line and "no broker answered at" (a probe).
    (RendezvousSettings, {"bootstrap": "user:S3CRET@127.0.0.1:1"}, "--bootstrap (value not shown) has a user"),
    (RendezvousSettings, {"bootstrap": "SASL_SSL://user:S3CRET@b:9093"}, "credentials as --kafka-config sasl."),
    (RendezvousSettings, {"deadline_ms": "-5"}, "--deadline-ms must be at least 1, got -5"),
    (RendezvousSettings, {"deadline_ms": "0"}, "--deadline-ms must be at least 1, got 0"),
    (RendezvousSettings, {"max_orphans": "-1"}, "--max-orphans must be at least 10, got -1"),
    (RendezvousSettings, {"max_held_bytes": "1000"}, "--max-held-bytes must be at least 1048576, got 1000"),
    # Read as no keys, it let every caller in (the review of the empty-item rule).
    (GatewaySettings, {"api_key_hashes": " , "}, "--api-key-hashes is empty: it holds no key"),
    # Taken: the window was merged and every gauge rebuilt after each batch.
    (ComparisonSettings, {"export_interval_s": "1e-9"}, "--export-interval-s must be at least 0.1, got 1e-09"),
    (DeploySettings, {"model": "demo:champion", "replicas": "1000"}, "--replicas must be at most 256, got 1000"),
    (DemoSettings, {"models": "=demo:champion"}, "--models expects name=spec"),
    (DemoSettings, {"models": "a=demo:champion,a=demo:canary"}, "--models names a more than once"),
    (ScheduleSetSettings, {"models": "a", "effective_in": "8d"}, "at most 7 days less an hour ahead"),
    # Taken, then refused by every reader when the CLI's clock ran a second ahead of the broker's,
    # the command blaming "another change" (a review).
    (ScheduleSetSettings, {"models": "a", "effective_in": "7d"}, "at most 7 days less an hour ahead"),
    # Taken: the instances read the version after it had taken effect (a retroactive change).
    (ScheduleSetSettings, {"models": "a", "effective_in": "5ms"}, "--effective-in 5ms: at least 1s ahead"),
    (PromoteSettings, {"effective_in": "999ms"}, "--effective-in 999ms: at least 1s ahead"),
    # Each of these was said only after the broker had been reached (or, --html, after the whole read).
    (ScheduleSetSettings, {}, "schedule set needs --models a,b,c or --file"),
    (ScheduleSetSettings, {"models": "a", "traffic": "a=lots"}, "--traffic: expected model=fraction"),
    (ScheduleSetSettings, {"models": "a", "file": "/nonexistent/s.json"}, "takes --file or --models"),
    (ScheduleSetSettings, {"file": "/nonexistent/s.json"}, "cannot read schedule file /nonexistent/s.json"),
    (GatewaySettings, {"grpc_port": "8080"}, "--http-port and --grpc-port are both 8080"),
    (GatewaySettings, {"metrics_port": "8081"}, "--grpc-port and --metrics-port are both 8081"),
    (CompareSettings, {"html": "/nonexistent/report.html"}, "--html /nonexistent/report.html: no such directory"),
    # Each said "no such file" (or "no such directory") of something that exists, only not as expected.
    (GatewaySettings, {"api_keys_file": "/tmp"}, "--api-keys-file /tmp: is a directory, not a file"),
    (GatewaySettings, {"api_keys_file": "/dev/null"}, "--api-keys-file /dev/null: is not a regular file"),
    (CompareSettings, {"html": "/etc/hostname/x.html"},
     "--html /etc/hostname/x.html: /etc/hostname is not a directory"),
    (DecoySettings, {"archive_dir": "/etc/hostname/archive"},
     "--archive-dir /etc/hostname/archive: /etc/hostname is not a directory"),
    (PromoteSettings, {"window": "forever"}, "--window: expected a duration"),
    (PromoteSettings, {"require": "agreement~0.9"}, "--require: cannot read"),
    # Given empty (--require "$GATE" with GATE unset), it read as no gate: published unchecked (a review).
    (PromoteSettings, {"require": ""}, "--require is empty: give the gate"),
    # Found by the replica it started, whose log alone said so; deploy waited out --wait-s.
    (DeploySettings, {"model": "demo:champion", "start_at": "abc"}, "--start-at: expected a time"),
    # It ran, "catching up from 4070908800000": a new group would have scored nothing till 2099.
    (DeploySettings, {"model": "demo:champion", "start_at": "2099-01-01"}, "--start-at 2099-01-01 is in the future"),
    (WorkerSettings, {"model": "demo:champion", "start_at": "4070908800000"}, "is in the future"),
    # deploy refused such names, model serve took them ("rdv.model.a b" as its group).
    (WorkerSettings, {"model": "demo:champion", "name": "a b"}, "--name 'a b': use letters, digits"),
    (WorkerSettings, {"model": "demo:champion", "co_host": "c/d=demo:canary"}, "--co-host name 'c/d': use letters"),
    (DeploySettings, {"model": "demo:champion", "start_from": "now"}, "--start-from must be earliest or latest"),
    (RendezvousSettings, {"topic": "requests=rdv.scores"}, "requests and scores would both be 'rdv.scores'"),
    (RendezvousSettings, {"topic_prefix": "my prefix/"}, "not a topic name Kafka accepts"),
    # The topic was replayed, the directory ignored; a directory not there was said only after the
    # broker was reached and the model loaded (a probe).
    (ReplaySettings, {"model": "demo:challenger", "archive_dir": "/nonexistent/a"},
     "--archive-dir is read with --source"),
    # Said after the broker was asked for the range (a probe).
    (ReplaySettings, {"model": "demo:nope"}, "demo:nope"),
    (ReplaySettings, {"model": "/nonexistent/m.skops"}, "/nonexistent/m.skops"),
    (ReplaySettings, {"model": "demo:challenger", "source": "archive", "archive_dir": "/nonexistent/a"},
     "--archive-dir /nonexistent/a: no such directory"),
    (ReplaySettings, {"model": "demo:challenger", "source": "archive", "archive_dir": "/etc/hostname"},
     "--archive-dir /etc/hostname: is not a directory"),
    # Kafka's rules for a group.instance.id: refused by the broker at the group's join only.
    (RendezvousSettings, {"instance": "a b"}, "--instance 'a b': use letters, digits, '.', '_' and '-'"),
    # Taken without a word by the commands that write nothing (acl show, models; a probe).
    (KafkaSettings, {"wire_format": "bogus"}, "--wire-format must be one of single-object, registry, got 'bogus'"),
    (KafkaSettings, {"wire_format": "registry"}, "--wire-format registry needs --schema-registry URL"),
    (KafkaSettings, {"schema_registry": "registry:8081"}, "--schema-registry must be an http(s):// URL"),
    # Waited on for --connect-timeout-s, then blamed on no broker; a port past 65535 was said as a
    # password to percent-encode; a space in a host failed at the first request (a probe).
    (KafkaSettings, {"bootstrap": "127.0.0.1:1;127.0.0.1:2"}, "expected host:port entries separated by commas"),
    # Taken, and written on every score and in metric labels, or a group named ' ' (a probe).
    (WorkerSettings, {"model": "demo:champion", "version": "v1\n2"}, "--version 'v1\\n2' holds a control character"),
    (WorkerSettings, {"model": "demo:champion", "instance": "x\ty"}, "--instance 'x\\ty' holds a control character"),
    (RendezvousSettings, {"group": " "}, "--group ' ' has spaces around it"),
    (GatewaySettings, {"reply_group": "g "}, "--reply-group 'g ' has spaces around it"),
    # Each failed only once Kafka had been reached; '' bound every interface (a probe).
    (GatewaySettings, {"http_addr": "999.1.1.1"}, "--http-addr '999.1.1.1' is no address to listen on"),
    (GatewaySettings, {"grpc_addr": "http://0.0.0.0"}, "--grpc-addr 'http://0.0.0.0' is no address to listen on"),
    (GatewaySettings, {"http_addr": ""}, "--http-addr is empty"),
    # 1e-320 made the first call over the limit wait inf: OverflowError in its Retry-After, a 500; 1e-300 a
    # Retry-After of 300 digits (a review).
    (GatewaySettings, {"rate_limit": "1e-300"}, "--rate-limit 1e-300 is below one a day (1.16e-05/s)"),
    (GatewaySettings, {"rate_limit_rows": "1e-9"}, "--rate-limit-rows 1e-09 is below one a day"),
    (KafkaSettings, {"schema_registry": "http://127.0.0.1:99999"}, "needs a host and a port from 1 to 65535"),
    (KafkaSettings, {"schema_registry": "http://exa mple.com"}, "its host is no host name or address"),
    # Compared with a page's host name, each would never match: pages under it were refused (a probe).
    (GatewaySettings, {"allowed_hosts": "http://evil.com/"}, "--allowed-hosts: 'http://evil.com/' is not a host"),
    (GatewaySettings, {"allowed_hosts": "ok.example.com,*"}, "'*' is not a host name (no scheme, port, path or"),
    (GatewaySettings, {"allowed_hosts": "serving:8080"}, "'serving:8080' is not a host name"),
    # librdkafka refused them once the broker had answered, blaming --kafka-config (a probe).
    (RendezvousSettings, {"transaction_timeout_ms": "999"}, "--transaction-timeout-ms must be at least 1000"),
    (RendezvousSettings, {"session_timeout_ms": "300001"}, "--session-timeout-ms must be at most 300000"),
    (RendezvousSettings, {"output_linger_ms": "900001"}, "--output-linger-ms must be at most 900000"),
    # Every transaction aborted by the broker before its commit, the outputs redone, for good (a review).
    (RendezvousSettings, {"commit_interval_ms": "6000"},
     "--commit-interval-ms 6000 must be at most half of --transaction-timeout-ms (10000)"),
    # Followed or published as given: a schedule no other command used (a probe).
    (RendezvousSettings, {"schedule_name": ""}, "--schedule-name is empty: name a schedule"),
    (ScheduleSetSettings, {"models": "a", "schedule_name": " default"}, "' default' has spaces around it"),
    (PromoteSettings, {"schedule_name": "   "}, "--schedule-name is empty"),
    (GatewaySettings, {"schedule": "default "}, "--schedule 'default ' has spaces around it"),
    # Each dropped without a word, the file's schedule followed (a probe).
    (RendezvousSettings, {"schedule_file": "s.json", "models": "b,c"}, "default deadline: --models go in the file"),
    (RendezvousSettings, {"schedule_file": "s.json", "wait": "champion=5", "models": "champion"},
     "--schedule-file gives the models, waits and default deadline: --models and --wait go in"),  # the default's
    (RendezvousSettings, {"schedule_file": "s.json", "deadline_ms": "200"}, "('models', 'waits_ms', 'default_dead"),
])
def test_a_bad_value_is_refused_with_its_reason(cls: type, values: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as refused:
        from_namespace(cls, None, **values)
    assert "S3CRET" not in str(refused.value)


def test_a_bootstrap_entry_may_name_its_security_protocol_in_any_case() -> None:
    from services.core.settings import check_bootstrap

    check_bootstrap("PLAINTEXT://a:9092,sasl_ssl://b:9093,Ssl://[::1]:9094,SASL_PLAINTEXT://c")
    check_bootstrap("sasl_ssl://b:9093,SASL_SSL://c:9093,d:9093", "SASL_SSL")
    check_bootstrap("PLAINTEXT://a:9092", "plaintext")


def test_a_commit_interval_is_held_below_the_transaction_timeout_only_where_there_are_transactions() -> None:
    from_namespace(RendezvousSettings, None, commit_interval_ms="5000")  # half of the default 10000
    from_namespace(RendezvousSettings, None, commit_interval_ms="60000", transaction_timeout_ms="120000")
    from_namespace(RendezvousSettings, None, commit_interval_ms="60000", processing="at-least-once")


def test_a_schedule_files_effective_at_in_the_future_is_when_it_takes_effect(tmp_path: Path) -> None:
    """It was replaced by now + --effective-in: a change meant for tomorrow 09:00 went live in 2 s (a review)."""
    from services.cli.lifecycle import _effective_at_of
    from services.control.schedule import Schedule

    now, hour = 1_700_000_000_000, 3_600_000
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"models": ["a"]}))
    settings = from_namespace(ScheduleSetSettings, None, file=str(path))
    tomorrow = now + 20 * hour
    assert _effective_at_of(settings, Schedule(models=("a",), effective_at=tomorrow), now) == (tomorrow, [])
    assert _effective_at_of(settings, Schedule(models=("a",)), now) == (None, [])
    past, notes = _effective_at_of(settings, Schedule(models=("a",), effective_at=now - hour), now)
    assert past is None and "is past: the version takes effect --effective-in (2s) from now" in notes[0]
    with pytest.raises(ConfigError, match=r"effective_at .* at most 7 days less an hour ahead"):
        _effective_at_of(settings, Schedule(models=("a",), effective_at=now + 8 * 24 * hour), now)
    with pytest.raises(ConfigError, match=r"effective_at .* at least 1s ahead \(readers poll the control topic"):
        _effective_at_of(settings, Schedule(models=("a",), effective_at=now + 5), now)


START_MS = 1_700_000_000_000


def stub_control_topic(
    monkeypatch: pytest.MonkeyPatch, book: ScheduleBook | None, published: list[Schedule] | None = None,
) -> list[Schedule]:
    """A change command's read of the control topic (it holds `book`; None: read as it is) and its
    write, without a broker: what it publishes goes into `published` (returned; a new list if not
    given), accepted as written."""
    from services.cli import lifecycle

    published = [] if published is None else published
    if book is not None:
        monkeypatch.setattr(lifecycle, "_book", lambda _settings, new=False: book)
    monkeypatch.setattr(lifecycle, "publish", lambda _config, _topic, schedule: published.append(schedule) or schedule)
    return published


def _set_from_file_after_a_slow_live_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, book: ScheduleBook, models: list[str], published: list[Schedule],
) -> None:
    """`schedule set --file` of `models` effective 2 s from START_MS, on a topic holding `book`,
    its live check taking 3.25 s (the scores topic read for seconds); what it publishes goes into
    `published`."""
    from services.cli import lifecycle

    clock = [START_MS]

    def slow_live_check(_settings: object, _schedule: object) -> list[str]:
        clock[0] += 3_250
        return []

    monkeypatch.setattr(lifecycle, "now_ms", lambda: clock[0])
    monkeypatch.setattr(lifecycle, "_check_live", slow_live_check)
    stub_control_topic(monkeypatch, book, published)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"models": models, "effective_at": START_MS + 2_000}))
    lifecycle.cmd_schedule_set(from_namespace(ScheduleSetSettings, None, file=str(path)), Console(quiet=True))


def test_a_schedule_name_the_control_topic_does_not_hold_beside_others_is_refused_unless_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`schedule set` without --schedule-name on a deployment serving `prod` published `default`
    v1, which no rendezvous follows, exit 0 (and undeploy's check then read it and let the champion
    go; a review). Promote and rollback said "run schedule set", which did just that."""
    from services.cli import lifecycle

    monkeypatch.setattr(lifecycle, "load_books", lambda _config, _topic, _name: (ScheduleBook("default"), {"prod"}))
    monkeypatch.setattr(lifecycle, "_check_live", lambda *_args: [])
    published = stub_control_topic(monkeypatch, None)
    asked = {"bootstrap": NO_BROKER, "models": ("a", "b")}
    said = r"holds no schedule named 'default' \(it holds 'prod'\): name the one .*; or `schedule set --new-schedule`"
    with pytest.raises(ConfigError, match=said):
        lifecycle.cmd_schedule_set(from_namespace(ScheduleSetSettings, None, **asked), Console(quiet=True))
    with pytest.raises(ConfigError, match=r"holds no schedule named 'default' \(it holds 'prod'\): name the one"):
        rollback = from_namespace(lifecycle.RollbackSettings, None, bootstrap=NO_BROKER)
        lifecycle.cmd_rollback(rollback, Console(quiet=True))
    assert published == []
    settings = from_namespace(ScheduleSetSettings, None, new_schedule=True, **asked)
    assert lifecycle.cmd_schedule_set(settings, Console(quiet=True)) == 0
    assert [(v.name, v.version, v.models) for v in published] == [("default", 1, ("a", "b"))]


def test_a_file_time_that_the_live_check_ran_past_is_refused_not_published_retroactive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file's effective_at was checked (at least 1 s ahead) before the live check, which reads
    the scores topic for seconds, and published as is after it: 2 s ahead at the check, it took
    effect 1.25 s before it was written (readers start it at its write, within the 1 s they need to
    read it; a review of e7486dc)."""
    published: list[Schedule] = []
    with pytest.raises(ConfigError, match=r"effective_at .* at least 1s ahead"):
        _set_from_file_after_a_slow_live_check(tmp_path, monkeypatch, ScheduleBook("default"), ["a"], published)
    assert published == []


def test_a_file_time_the_live_check_ran_past_is_published_when_a_pending_version_holds_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The re-check just before publishing looked at the file's time, not at when the version
    starts: behind a version pending for an hour it starts then, yet it was refused (a review)."""
    book = ScheduleBook("default")
    book.add(Schedule(models=("a",), version=1, created_at=START_MS - 10_000, effective_at=START_MS - 10_000))
    book.add(Schedule(models=("b",), version=2, created_at=START_MS, effective_at=START_MS + 3_600_000))
    published: list[Schedule] = []
    _set_from_file_after_a_slow_live_check(tmp_path, monkeypatch, book, ["c"], published)
    assert [(p.version, p.effective_at) for p in published] == [(3, START_MS + 3_600_000)]


def test_gateway_files_that_would_let_everyone_in_or_fail_after_kafka_are_refused(tmp_path: Path) -> None:
    empty, binary, pem = tmp_path / "empty.keys", tmp_path / "binary.keys", tmp_path / "bad.pem"
    empty.write_text("# no key yet\n")
    binary.write_bytes(b"\xff\xfe\x00binary")
    pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="holds no key"):  # it ran with no authentication at all
        from_namespace(GatewaySettings, None, api_keys_file=str(empty))
    inline = "ops:" + "ab" * 32  # with keys given inline, an empty file adds none: fine
    assert from_namespace(GatewaySettings, None, api_keys_file=str(empty), api_key_hashes=inline)
    with pytest.raises(ConfigError, match="is not text"):
        from_namespace(GatewaySettings, None, api_keys_file=str(binary))
    with pytest.raises(ConfigError, match="not a PEM certificate and its key"):
        from_namespace(GatewaySettings, None, tls_cert=str(pem), tls_key=str(pem))


def keys_file_in(folder: Path) -> Path:
    keys = folder / "api.keys"
    keys.write_text("ops:" + "ab" * 32 + "\n")
    return keys


def assert_modes(keys: Path, changed: Path, fine: tuple[int, ...], refused: int, said: str) -> None:
    """`changed` (the keys file, or its directory) at each of the `fine` modes: the gateway takes
    `keys`; at `refused`: refused, saying `said`."""
    for mode in fine:
        changed.chmod(mode)
        assert from_namespace(GatewaySettings, None, api_keys_file=str(keys))
    changed.chmod(refused)
    with pytest.raises(ConfigError, match=re.escape(said)):
        from_namespace(GatewaySettings, None, api_keys_file=str(keys))


def test_a_keys_file_every_user_can_write_is_refused(tmp_path: Path) -> None:
    """Re-read every few seconds, it let any user who could write it add a key of their own (a review)."""
    keys = keys_file_in(tmp_path)
    # Readable by others (a Kubernetes Secret's default), writable by its group: fine.
    said = f"--api-keys-file {keys} is writable by every user (mode 0666): anyone can let themselves in; chmod o-w"
    assert_modes(keys, keys, (0o644, 0o664), 0o666, said)


def test_a_keys_file_in_a_directory_every_user_can_write_is_refused(tmp_path: Path) -> None:
    """Its own mode was checked alone: in a directory writable by all, any user could put a file of
    their own in its place, read again within seconds (a review). The sticky bit (/tmp, a
    Kubernetes Secret's mount) forbids that: accepted."""
    folder = tmp_path / "shared"
    folder.mkdir()
    keys = keys_file_in(folder)
    said = f"--api-keys-file {keys}: its directory {folder} is writable by every user (mode 0777)"
    assert_modes(keys, folder, (0o755, 0o775, 0o1777), 0o777, said)


def test_a_tls_key_encrypted_with_a_passphrase_is_refused_without_asking_for_it(tmp_path: Path) -> None:
    """OpenSSL asked for the passphrase on the terminal (a service would wait there), then said
    the file was no PEM certificate."""
    from services.localkafka.tls import generate

    files = generate(tmp_path)
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    assert from_namespace(GatewaySettings, None, tls_cert=str(files.certificate), tls_key=str(files.key))
    with pytest.raises(ConfigError, match="is encrypted with a passphrase"):
        from_namespace(GatewaySettings, None, tls_cert=str(files.certificate), tls_key=str(encrypted))


def test_a_tls_key_every_user_may_read_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It was accepted without a word (a security review); refused, it would stop a gateway whose
    Kubernetes Secret is mounted with the default mode (0644)."""
    from services.localkafka.tls import generate

    files = generate(tmp_path)
    files.key.chmod(0o600)
    with caplog.at_level("WARNING"):
        assert from_namespace(GatewaySettings, None, tls_cert=str(files.certificate), tls_key=str(files.key))
    assert not [r for r in caplog.records if "--tls-key" in r.getMessage()]
    files.key.chmod(0o644)
    with caplog.at_level("WARNING"):
        assert from_namespace(GatewaySettings, None, tls_cert=str(files.certificate), tls_key=str(files.key))
    said = f"--tls-key {files.key} is readable by every user of this host (mode 0644)"
    assert any(said in r.getMessage() for r in caplog.records)


def test_output_read_by_a_reader_that_goes_away_ends_quietly() -> None:
    """`rendezvous acl show | head -1` printed a BrokenPipeError traceback; with stdout buffered
    (PYTHONUNBUFFERED unset, as it is for most users), the interpreter's flush at exit met the
    closed pipe instead: exit status 120 (a review)."""
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "acl", "show"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=buffered)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes: its first write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(60) == 0 and "Traceback" not in stderr, stderr


def test_a_csv_saved_with_a_byte_order_mark_names_its_first_feature_without_it(tmp_path: Path) -> None:
    from services.cli.send import SendSettings, read_rows

    path = tmp_path / "rows.csv"
    path.write_bytes("\ufeffmean_radius,mean_texture\n14.2,19.1\n".encode())
    assert read_rows(SendSettings(file=str(path))) == [{"mean_radius": 14.2, "mean_texture": 19.1}]


def test_send_says_at_once_that_no_broker_answers() -> None:
    """It swallowed that while looking for unknown features, then waited for the broker again."""
    from services.cli.send import SendSettings, warn_unknown_features
    from services.core.kafka import connect_timeout, set_connect_timeout

    before = connect_timeout()
    set_connect_timeout(1)
    try:
        with pytest.raises(BrokerUnavailable):
            warn_unknown_features(SendSettings(bootstrap=NO_BROKER, connect_timeout_s=1), [{"a": 1.0}])
    finally:
        set_connect_timeout(before)


def test_a_damaged_deployment_state_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli.deploy import cmd_deploy, cmd_undeploy

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    state = tmp_path / "deployments" / "champion" / "state.json"
    state.parent.mkdir(parents=True)
    for damaged in ('{"replicas": {"0": "pid"}}', "{not json", '["a list"]'):
        state.write_text(damaged)
        with pytest.raises(ConfigError, match="deployment champion"):
            cmd_deploy(DeploySettings(model="demo:champion"), "champion", Console())
        with pytest.raises(ConfigError, match="deployment champion"):
            cmd_undeploy("champion", Console())


def test_a_decoy_manifest_with_fields_of_the_wrong_type_is_a_one_line_error(tmp_path: Path) -> None:
    from services.decoy.archive import MANIFEST, read_manifest

    (tmp_path / MANIFEST).write_text(json.dumps({"files": [{"name": "a.avro", "first_timestamp": "soon"}]}))
    with pytest.raises(ConfigError, match=r"manifest .* is unreadable"):
        read_manifest(tmp_path)


def test_topic_names_kafka_takes_still_pass() -> None:
    topics = Topics.from_prefix("t0123456789.", {"requests": "prod.requests-v2_x"})
    assert topics.requests == "prod.requests-v2_x" and topics.scores == "t0123456789.scores"


def test_a_cache_directory_that_cannot_be_made_is_one_error_line() -> None:
    """A read-only or full disk under the cache printed a traceback (a review of the local broker)."""
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "broker", "start"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RDV_CACHE_DIR": "/etc/hostname/cache"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: Not a directory: /etc/hostname/cache")


def test_a_cache_directory_that_is_a_file_is_said_so(tmp_path: Path) -> None:
    """`broker status` showed a data directory under the file and "running": false (a review)."""
    afile = tmp_path / "cache"
    afile.write_text("")
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "broker", "status"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RDV_CACHE_DIR": str(afile)})
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.strip().splitlines() == [f"error: RDV_CACHE_DIR '{afile}' is not a directory: point it at "
                                                "one (made if missing), or unset it"]


def test_a_replica_that_exited_unreaped_is_not_taken_for_a_running_one() -> None:
    """Its parent (the deploy command) gone, a dead replica stays a zombie until init reaps it:
    kill(pid, 0) still found it, and the next deploy said it already ran, starting nothing."""
    from services.cli.deploy import _alive, _zombie
    from tests.integration.harness import wait_until

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: _zombie(child.pid), 30, "the child exited, not reaped")
    assert not _alive(child.pid)
    child.wait()
    assert not _alive(child.pid)
    assert _alive(os.getpid())


def test_a_new_deployment_scores_the_requests_from_now_on_unless_told_otherwise() -> None:
    """Its workers started at the worker's default, earliest: a new challenger first scored every
    request the topic held (days of them, its live scores late meanwhile)."""
    from services.cli.deploy import _replica_args, compose_block

    def start(settings: DeploySettings) -> str:
        args = _replica_args("challenger3", settings, 0)
        return args[args.index("--start-from") + 1]

    assert start(DeploySettings(model="demo:challenger")) == "latest"
    assert start(DeploySettings(model="demo:challenger", start_from="earliest")) == "earliest"
    assert '"--start-from", "latest"' in compose_block("challenger3", DeploySettings(model="demo:challenger"))


def test_new_replicas_of_a_deployment_start_as_it_was_deployed() -> None:
    """A scale-up of an `earliest` deployment started its replicas at the default, latest: a
    partition one took before any commit of it skipped the backlog (a review)."""
    from services.cli.deploy import _replica_args, as_deployed

    state = {"model": "demo:challenger", "version": "2", "co_host": [], "trusted": True, "trusted_files": {},
             "start_from": "earliest"}
    scaled = as_deployed(DeploySettings(replicas=3), state)
    args = _replica_args("challenger3", scaled, 2)
    assert args[args.index("--start-from") + 1] == "earliest" and args[args.index("--model") + 1] == "demo:challenger"
    assert (scaled.version, scaled.trust_model_file) == ("2", True)
    older = as_deployed(DeploySettings(replicas=3, start_from="earliest"), {"model": "demo:challenger"})
    assert older.start_from == "earliest" and not older.trust_model_file  # a state from before: the flag given


def test_a_trusted_model_file_stays_trusted_only_while_its_bytes_are_those_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rescale or restart loaded the recorded relative path from the shell's directory, trusted:
    a pickle of that name there, or one put in the file's place, ran without --trust-model-file
    (a review). The state names the file by its absolute path, and its digest."""
    from services.cli import deploy

    deployed_in, elsewhere = tmp_path / "a", tmp_path / "b"
    for folder in (deployed_in, elsewhere):
        folder.mkdir()
        (folder / "model.joblib").write_bytes(f"pickle of {folder.name}".encode())
    monkeypatch.setattr(deploy, "_state_file", lambda name: tmp_path / f"{name}.json")
    monkeypatch.chdir(deployed_in)
    deploy._record("chal", DeploySettings(model="model.joblib", co_host=("b=model.joblib",), trust_model_file=True), {})
    state = deploy._state("chal")
    assert state["model"] == str(deployed_in / "model.joblib") and state["co_host"] == [f"b={state['model']}"]
    monkeypatch.chdir(elsewhere)
    scaled = deploy.as_deployed(DeploySettings(replicas=2), state)
    assert scaled.model == str(deployed_in / "model.joblib") and scaled.trust_model_file  # the same bytes
    (deployed_in / "model.joblib").write_bytes(b"another pickle")
    assert not deploy.as_deployed(DeploySettings(replicas=2), state).trust_model_file
    assert deploy.as_deployed(DeploySettings(replicas=2, trust_model_file=True), state).trust_model_file  # asked


def test_a_deployments_state_file_is_readable_by_its_owner_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It holds an unsalted digest of the Kafka settings, a SASL password's among them: written
    0644, another local user could guess the password offline (a review)."""
    from services.cli import deploy

    monkeypatch.setattr(deploy, "_state_file", lambda name: tmp_path / f"{name}.json")
    deploy._record("chal", DeploySettings(model="demo:challenger", kafka_config=("sasl.password=S3CRET",)), {})
    assert (tmp_path / "chal.json").stat().st_mode & 0o777 == 0o600
    assert "S3CRET" not in (tmp_path / "chal.json").read_text()


def test_a_rescale_repeating_the_relative_model_path_it_was_deployed_with_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state names the file by its absolute path: the same command with another --replicas,
    from the same directory, was refused as another model (a review); from another directory it is one."""
    from rich.console import Console

    from services.cli import deploy

    (tmp_path / "model.joblib").write_bytes(b"pickle")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(deploy, "_state_file", lambda name: tmp_path / f"{name}.json")
    deploy._record("chal", DeploySettings(model="model.joblib", trust_model_file=True), {0: os.getpid()})
    monkeypatch.setattr(deploy, "_replicas", lambda name: {0: os.getpid()})

    class Accepted(Exception):
        pass

    def accepted(*_args: Any, **_kwargs: Any) -> None:
        raise Accepted

    monkeypatch.setattr(deploy, "wait_for_broker", accepted)
    with pytest.raises(Accepted):
        deploy._deploy(DeploySettings(model="model.joblib", trust_model_file=True, replicas=2), "chal", Console())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.joblib").write_bytes(b"pickle")
    monkeypatch.chdir(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"chal runs .*model\.joblib"):
        deploy._deploy(DeploySettings(model="model.joblib", trust_model_file=True, replicas=2), "chal", Console())


def test_a_replica_that_exits_while_its_group_forms_is_said_with_its_last_log_line(tmp_path: Path) -> None:
    """deploy waited out --wait-s, then said the group never formed; the reason was in the log."""
    from services.cli.deploy import _none_exited

    with (tmp_path / "replica-0.log").open("wb") as log:
        failing = subprocess.Popen([sys.executable, "-c", "print('starting'); print('error: no such model'); exit(2)"],
                                   stdout=log)
    failing.wait(30)
    with pytest.raises(ConfigError, match=r"replica 0 exited \(2\): error: no such model \(log: "):
        _none_exited({0: failing}, tmp_path)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _none_exited({0: running}, tmp_path)  # still running: nothing to say
    finally:
        running.kill()
        running.wait()


@pytest.mark.parametrize("name", ["a/b", "a+b", "..", "", "-x", "x" * 101, "café"])
def test_a_deployment_name_that_is_no_plain_folder_and_group_name_is_refused(name: str) -> None:
    """'a/b' made nested folders under the cache; 'a+b' took the group of model a co-hosting b."""
    from services.cli.deploy import cmd_deploy
    from services.model_worker.settings import check_model_name

    with pytest.raises(ConfigError, match="deployment name"):
        cmd_deploy(DeploySettings(model="demo:champion"), name, Console())
    for fine in ("challenger3", "fraud-v2.1", "m_1"):
        check_model_name(fine, "deployment name")


@pytest.mark.parametrize("cls", [WorkerSettings, DecoySettings])
@pytest.mark.parametrize("strategy", ["cooperative-sticky", "range,COOPERATIVE-STICKY"])
def test_a_cooperative_assignor_is_refused_at_start_in_one_line(cls: type, strategy: str, tmp_path: Path) -> None:
    """The model worker, decoy and comparison consumers take the user's assignor, and assign
    eagerly: under cooperative-sticky librdkafka refused the first assignment (_STATE, "must be made
    using incremental_assign()", checked on the local broker) and the service stopped."""
    required = {WorkerSettings: {"model": "demo:champion"}, DecoySettings: {"archive_dir": str(tmp_path)}}
    values: dict[str, object] = {"bootstrap": NO_BROKER, **required[cls],
                                 "kafka_config": (f"partition.assignment.strategy={strategy}",)}
    with pytest.raises(ConfigError) as refused:
        from_namespace(cls, **values)
    text = str(refused.value)
    assert "\n" not in text and "item 1 (partition.assignment.strategy): the cooperative-sticky assignor is not" in text
    values["kafka_config"] = ("partition.assignment.strategy=roundrobin",)
    assert from_namespace(cls, **values).librdkafka()["partition.assignment.strategy"] == "roundrobin"


@pytest.mark.parametrize(("argv", "said"), [
    (["status", "--fresh"], "broker status: --fresh is for `broker start` only"),
    (["reset", "--tls"], "broker reset: --tls is for `broker start` only"),
    (["stop", "--yes"], "broker stop: --yes is for `broker reset` only"),
])  # fmt: skip
def test_a_broker_flag_given_to_another_action_is_refused_before_it_acts(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each was ignored without a word: `broker reset --fresh` asked, `broker stop --yes` stopped it."""
    from services.cli.main import main

    assert main(["broker", *argv]) == 2
    assert capsys.readouterr().err == f"error: {said}\n"


@pytest.mark.parametrize("key", ["bootstrap.servers", "metadata.broker.list"])
@pytest.mark.parametrize("value", ["", "elsewhere:9092"])
def test_brokers_given_in_kafka_config_are_refused_for_bootstrap(key: str, value: str) -> None:
    """`--kafka-config bootstrap.servers=` replaced --bootstrap silently: the start-up line showed
    --bootstrap's broker, the service connected to '' (the misconfiguration probe)."""
    said = f"item 1 ({key}): the brokers are given with --bootstrap (KAFKA_BOOTSTRAP_SERVERS)"
    with pytest.raises(ConfigError, match=re.escape(said)):
        from_namespace(RendezvousSettings, bootstrap=NO_BROKER, kafka_config=(f"{key}={value}",))


@pytest.mark.parametrize(("item", "said"), [
    ("enable.auto.commit=true", "the services commit only finished work themselves"),
    ("enable.auto.commit=1", "the services commit only finished work themselves"),
    ("group.id=mine", "each service names its consumer group"),
    ("group.instance.id=a", "a replica's static membership id is --instance"),
    ("transactional.id=t", "each service derives its transactional ids"),
])  # fmt: skip
def test_what_a_service_sets_for_its_own_clients_is_refused_in_kafka_config(item: str, said: str) -> None:
    """Accepted, auto commit won over the services' (offsets committed before the work behind them
    was done); the ids were overwritten by the service's own without a word (a probe)."""
    key = item.partition("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"item 1 ({key}): {said}")):
        from_namespace(RendezvousSettings, bootstrap=NO_BROKER, kafka_config=(item,))
    assert from_namespace(RendezvousSettings, bootstrap=NO_BROKER, kafka_config=("enable.auto.commit=false",))


@pytest.mark.parametrize("cls", [RendezvousSettings, WorkerSettings, DecoySettings, GatewaySettings])
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_the_new_group_protocol_is_refused_at_start_in_one_line_saying_why(
    cls: type, source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """group.protocol=consumer (KIP-848) was taken, its incremental assignment unhandled by the
    co-partitioned recovery (docs/failover.md); only the session timeout's default was left out."""
    from services.core.service import GROUP_DEFAULTS

    required = {WorkerSettings: {"model": "demo:champion"}, DecoySettings: {"archive_dir": str(tmp_path)}}
    values: dict[str, object] = {"bootstrap": NO_BROKER, **required.get(cls, {})}
    if source == "environment":
        monkeypatch.setenv("RDV_KAFKA_CONFIG", "acks=all;group.protocol=Consumer")
    else:
        values["kafka_config"] = ("acks=all", "group.protocol=consumer")
    with pytest.raises(ConfigError) as refused:
        from_namespace(cls, **values)
    text = str(refused.value)
    assert "\n" not in text and "item 2 (group.protocol): only the classic group protocol is supported" in text
    assert '(docs/failover.md, "Why the classic protocol, not KIP-848")' in text
    values["kafka_config"] = ("group.protocol=classic",)
    config = from_namespace(cls, **values).librdkafka()
    assert config["group.protocol"] == "classic"
    from confluent_kafka import Consumer as NativeConsumer

    NativeConsumer({"group.id": "g", **GROUP_DEFAULTS, **config}).close()  # as StreamService builds it


def test_a_recorded_pid_now_naming_another_process_is_no_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reboot (the record lives in the cache) a replica's pid named some other process:
    deploy counted it as running and started nothing, undeploy killed its process group."""
    import subprocess
    import sys

    from services.cli.deploy import _identity, cmd_undeploy, running_pids

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    state = tmp_path / "deployments" / "champion" / "state.json"
    state.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        identity = _identity(other.pid)
        assert identity is not None
        record = {"name": "champion", "model": "demo:champion", "replicas": {"0": other.pid}}
        state.write_text(json.dumps({**record, "identities": {"0": identity}}))
        assert running_pids("champion") == [other.pid]  # its own replica
        state.write_text(json.dumps(record))
        assert running_pids("champion") == [other.pid]  # a record from before identities: trusted as it was
        state.write_text(json.dumps({**record, "identities": {"0": identity.rsplit("/", 1)[0] + "/1"}}))
        assert running_pids("champion") == []  # the same pid, another process

        assert cmd_undeploy("champion", Console()) == 0
        assert not state.exists() and other.poll() is None  # the record goes, the process lives on
    finally:
        other.kill()
        other.wait()


def _undeploy_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: dict[str, Any], *versions: Any) -> None:
    """`undeploy champion`'s check against the schedule, for a deployment of `state`; the broker's
    read is what is replaced: the check itself is the book's."""
    from services.cli import deploy
    from services.control.topic import ScheduleBook

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    path = tmp_path / "deployments" / "champion" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "champion", "model": "demo:champion", "replicas": {}, **state}))
    book = ScheduleBook.holding(*versions)
    monkeypatch.setattr(deploy, "_read_from_broker", lambda _settings, _console, _read: (book, set()))
    deploy._check_not_preferred("champion", deploy.UndeploySettings(), Console())


def test_undeploy_refuses_the_model_the_version_in_force_answers_with_while_a_change_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the latest version was checked: with a promotion pending for an hour, the champion
    the version in force answers with was stopped (a review)."""
    from services.control.schedule import Schedule
    from services.core.runtime import now_ms

    pending = Schedule(models=("challenger", "canary"), version=2, effective_at=now_ms() + 3_600_000)
    with pytest.raises(ConfigError, match=r"champion is what schedule default v1 answers with until the next version"):
        _undeploy_check(tmp_path, monkeypatch, {}, Schedule(models=("champion", "canary"), version=1), pending)


def test_undeploy_refuses_a_deployment_co_hosting_the_preferred_model_under_a_spaced_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--co-host 'challenger =demo:challenger'` hosts `challenger` (the name is stripped), but the
    check read 'challenger ' and stopped the model the schedule answers with (a review)."""
    from services.control.schedule import Schedule

    with pytest.raises(ConfigError, match=r"challenger is what schedule default v1 answers with"):
        _undeploy_check(tmp_path, monkeypatch, {"co_host": ["challenger =demo:challenger"]},
                        Schedule(models=("challenger", "champion"), version=1))


def test_undeploy_checking_a_schedule_name_the_topic_does_not_hold_says_which_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a deployment serving `prod`, `undeploy champion` checked the empty `default` book: nothing
    held it back, and the champion could be stopped without a word (a review). The refusal then
    came from inside the broker read, which took it for the broker not answering: a note, and the
    champion stopped all the same (a review): the real `_read_from_broker` here."""
    from services.cli import common, deploy
    from services.control import topic
    from services.control.schedule import Schedule

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    broker = "127.0.0.1:9"  # never reached: the book is read by the stand-in load_books
    path = tmp_path / "deployments" / "champion" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "champion", "model": "demo:champion", "replicas": {}}))
    prod = ScheduleBook.holding(Schedule(models=("champion", "canary"), version=1, name="prod"))
    books = {"prod": prod, "default": ScheduleBook("default")}
    monkeypatch.setattr(topic, "load_books", lambda _config, _topic, name: (books[name], {"prod"}))
    monkeypatch.setattr(common, "warn_of_history_loss", lambda *_a: None)  # a broker's check
    with pytest.raises(ConfigError, match=r"holds no schedule named 'default' \(it holds 'prod'\): name the one"):
        deploy._check_not_preferred("champion", deploy.UndeploySettings(bootstrap=broker), Console())
    with pytest.raises(ConfigError, match="champion is what schedule prod v1 answers with"):
        settings = deploy.UndeploySettings(bootstrap=broker, schedule_name="prod")
        deploy._check_not_preferred("champion", settings, Console())
    def several_partitions(_config: object, name: str, _schedule: str) -> object:
        raise topic.UnusableControlTopic(f"{name} has 2 partitions: the control topic must have one")

    monkeypatch.setattr(topic, "load_books", several_partitions)  # refused inside the read: refused, not a note
    with pytest.raises(ConfigError, match="has 2 partitions"):
        deploy._check_not_preferred("champion", deploy.UndeploySettings(bootstrap=broker), Console())

    def no_client(_config: object, _topic: str, _name: str) -> object:
        raise ConfigError("librdkafka refused the configuration: ssl.ca.location: No such file")

    monkeypatch.setattr(topic, "load_books", no_client)  # another machine's CA file: a note, the model stops
    deploy._check_not_preferred("champion", deploy.UndeploySettings(bootstrap=broker), Console())
    books["prod"] = ScheduleBook("prod")  # a topic holding no schedule at all: nothing answers, nothing refused
    monkeypatch.setattr(topic, "load_books", lambda _config, _topic, name: (books[name], set()))
    deploy._check_not_preferred("champion", deploy.UndeploySettings(bootstrap=broker), Console())


def test_a_report_page_that_cannot_be_written_whole_leaves_the_last_one_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk halfway through the write left the previous report cut short (a review)."""
    from services.compare_report import html
    from services.core import files

    page = tmp_path / "report.html"
    page.write_text("<html>the last report</html>")
    real_fdopen = files.os.fdopen

    class HalfThenFull:
        def __init__(self, fd: int, *args: Any, **kwargs: Any) -> None:
            self.handle = real_fdopen(fd, *args, **kwargs)

        def __enter__(self) -> HalfThenFull:
            return self

        def __exit__(self, *_exc: object) -> None:
            self.handle.close()

        def write(self, text: str) -> int:
            self.handle.write(text[: len(text) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(html, "render_html", lambda _report: "<html>" + "x" * 1000 + "</html>")
    monkeypatch.setattr(files.os, "fdopen", HalfThenFull)
    with pytest.raises(ConfigError, match="cannot write the report: No space left on device"):
        html.write_html(None, page)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert page.read_text() == "<html>the last report</html>" and list(tmp_path.iterdir()) == [page]


def _deploy_without_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`deploy` with its state under `tmp_path` and its questions to the broker answered here."""
    from services.cli import deploy

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    for quiet in ("wait_for_broker", "_check_models", "_note_idle_replicas"):
        monkeypatch.setattr(deploy, quiet, lambda *_args: None)
    monkeypatch.setattr(deploy, "_committed_before", lambda *_args: False)


def _kill_sessions(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_deploy_that_fails_half_way_leaves_no_replica_running_and_none_unrecorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas run in sessions of their own, and the state naming them was written only after
    every one was started: a later replica that could not start (or Ctrl-C) left the first ones
    running where `undeploy` could not find them (a review)."""
    import signal
    import subprocess

    from services.cli import deploy

    _deploy_without_kafka(tmp_path, monkeypatch)
    started: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], log_file: Path, env: dict[str, str], *, detached: bool = False) -> object:
        if len(started) == 2:
            raise OSError(f"cannot write {log_file.name}")
        started.append(subprocess.Popen(["sleep", "60"], start_new_session=detached))
        assert deploy._replicas("champion") == {i: p.pid for i, p in enumerate(started[:-1])}  # recorded as it goes
        return started[-1]

    monkeypatch.setattr(deploy, "spawn", spawn)
    try:
        with pytest.raises(OSError, match=r"cannot write replica-2\.log"):
            deploy.cmd_deploy(DeploySettings(model="demo:champion", replicas=3), "champion", Console())
        assert [process.wait(timeout=30) for process in started] == [-signal.SIGTERM] * 2
        assert not deploy._state_file("champion").exists()  # a new deployment that did not start: no record
    finally:
        _kill_sessions(started)


def test_a_replica_that_exits_while_the_group_forms_says_the_others_run_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failing replica was said, not that the others ran on, recorded, nor how to stop them
    (the broker's error path said both; a review)."""
    import subprocess

    from services.cli import deploy

    _deploy_without_kafka(tmp_path, monkeypatch)
    started: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], log_file: Path, env: dict[str, str], *, detached: bool = False) -> object:
        command = ["false"] if started else ["sleep", "60"]  # the second replica fails at once
        started.append(subprocess.Popen(command, start_new_session=detached))
        return started[-1]

    def forming(*_args: Any, check: Any, **_kwargs: Any) -> None:
        started[1].wait(30)
        check()  # as wait_for_groups calls it while the group forms

    monkeypatch.setattr(deploy, "spawn", spawn)
    monkeypatch.setattr(deploy, "wait_for_groups", forming)
    try:
        with pytest.raises(ConfigError) as refused:
            deploy.cmd_deploy(DeploySettings(model="demo:champion", replicas=2), "champion", Console())
        assert re.fullmatch(rf"replica 1 exited \(1\): no output .*; champion's other replicas run on \(pids "
                            rf"\[{started[0].pid}\]\): `rendezvous undeploy champion` stops them", str(refused.value))
    finally:
        _kill_sessions(started)


def test_deploys_and_undeploys_of_one_deployment_wait_for_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two at once each read the state, each started a replica, and the last state written won:
    the other replica ran where no undeploy found it (a review)."""
    import fcntl
    import io
    import threading
    import time

    from services.cli import deploy

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    lock = deploy._state_file("champion").with_name("deploy.lock")
    lock.parent.mkdir(parents=True)
    said = io.StringIO()
    outcome: list[BaseException] = []

    def undeploy() -> None:
        try:
            deploy.cmd_undeploy("champion", Console(file=said))
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)

    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another deploy of it, running
        waiting = threading.Thread(target=undeploy)
        waiting.start()
        deadline, note = time.monotonic() + 30, "another deploy or undeploy of champion is running"
        while note not in said.getvalue() and time.monotonic() < deadline:
            waiting.join(timeout=0.01)  # until it says it waits for the lock
        assert waiting.is_alive() and note in said.getvalue()
        fcntl.flock(held, fcntl.LOCK_UN)
    waiting.join(timeout=30)
    assert not waiting.is_alive() and isinstance(outcome[0], ConfigError)  # then it ran: nothing deployed


def test_send_refuses_a_row_the_client_would_refuse_before_anything_is_sent(tmp_path: Path) -> None:
    """The file's check let a feature named with a lone surrogate through; the client refused it
    in the send loop, after the rows before it had gone, their answers unprinted (a review)."""
    from services.cli.send import SendSettings, _json_line, read_rows

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"\\ud800": 3}\n')
    with pytest.raises(ConfigError, match=r"rows\.jsonl:3: feature name .* must be a non-empty string of text"):
        read_rows(SendSettings(file=str(path)))
    line = _json_line({"request_id": "r", "score": float("nan"), "latency_ms": float("inf"), "label": "x"})
    assert json.loads(line) == {"request_id": "r", "score": None, "latency_ms": None, "label": "x"}


def test_a_librdkafka_setting_given_twice_is_refused_without_either_value() -> None:
    """The last one won without a word (a probe): a password given twice, say, one of them stale."""
    with pytest.raises(ConfigError, match=re.escape("--kafka-config item 2 (sasl.password): its key is given "
                                                    "twice: one value each")) as refused:
        from_namespace(RendezvousSettings, bootstrap=NO_BROKER,
                       kafka_config=("sasl.password=S3CRET-a", "sasl.password=S3CRET-b"))
    assert "S3CRET" not in str(refused.value)
    with pytest.raises(ConfigError, match=re.escape("--kafka-config item 2: its key is given twice")) as refused:
        from_namespace(RendezvousSettings, bootstrap=NO_BROKER, kafka_config=("S3CRET!key=1", "S3CRET!key=2"))
    assert "S3CRET" not in str(refused.value)  # a key that is no librdkafka name may be a value pasted


def test_a_top_level_flag_is_not_taken_by_an_abbreviation(capsys: pytest.CaptureFixture[str]) -> None:
    """`--log debug` was taken for --log-level, and every flag of the command after it was
    "unrecognized": the command's flags were never built (a probe)."""
    from services.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["--log", "debug", "send", "--bootstrap", NO_BROKER, "--demo-rows", "1"])
    said = capsys.readouterr().err
    assert exited.value.code == 2
    assert "invalid choice: 'debug'" in said and "--bootstrap" not in said


def test_send_refuses_a_feature_given_twice_in_one_row(tmp_path: Path) -> None:
    """JSON keeps the last of a key given twice without a word: the row sent was not the one written (a probe)."""
    from services.cli.send import SendSettings, read_rows

    with pytest.raises(ConfigError, match=re.escape("--features: feature 'a' is given twice: one value each")):
        read_rows(SendSettings(features='{"a": 1, "b": 2, "a": 3}'))
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"b": 1, "b": 2}\n')
    with pytest.raises(ConfigError, match=r"rows\.jsonl:2: feature 'b' is given twice"):
        read_rows(SendSettings(file=str(path)))


def test_an_error_line_quoting_a_huge_value_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    """A 100 KB value was quoted whole in the "one line" (a probe)."""
    from services.cli.main import ERROR_CHARS, main

    assert main(["compare", "--bootstrap", NO_BROKER, "--since", "x" * 100_000]) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and len(said) < ERROR_CHARS + 100 and "characters more)" in said


def test_a_bad_value_from_a_variable_is_named_as_that_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """RDV_SCHEMA_REGISTRY=' ' was said as '--schema-registry must be ...', a flag never typed (a probe)."""
    monkeypatch.setenv("RDV_SCHEMA_REGISTRY", " ")
    with pytest.raises(ConfigError, match=re.escape("RDV_SCHEMA_REGISTRY (the environment's --schema-registry) must "
                                                    "be an http(s):// URL")):
        from_namespace(KafkaSettings, None)


def test_a_secret_in_an_error_line_is_masked_before_the_line_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    """Cut first, a secret straddling the cut was no longer found whole, and its first part shown (a review)."""
    from services.cli.main import ERROR_CHARS, main
    from services.core.redaction import never_print

    secret = "Hunter2SuperSecretPassword"
    never_print(secret)
    for offset in range(ERROR_CHARS - 100, ERROR_CHARS):  # the secret across the cut at some offset
        assert main(["compare", "--bootstrap", NO_BROKER, "--since", "x" * offset + f" {secret} " + "y" * 1_000]) == 2
        said = capsys.readouterr().err
        assert "Hunter2" not in said and "characters more)" in said, offset


def test_replay_says_at_start_that_a_directory_holds_no_archive(tmp_path: Path) -> None:
    """Said once the broker was reached and the model loaded, before (a probe)."""
    with pytest.raises(ConfigError, match=re.escape(f"--archive-dir {tmp_path} is not a decoy archive (no manifest")):
        from_namespace(ReplaySettings, None, model="demo:challenger", source="archive", archive_dir=str(tmp_path))


def test_numbers_written_in_digits_other_than_ascii_are_refused_where_people_type_them() -> None:
    """float() reads Arabic-Indic and full-width digits: a CSV cell or a --wait of them was taken
    for a number nobody typed (a probe)."""
    from services.cli.lifecycle import _draft_from_flags
    from services.cli.send import SendSettings, read_rows

    with pytest.raises(ConfigError, match="--features key 'a': feature value '\u0663' is not a number"):
        read_rows(SendSettings(features='{"a": "\\u0663"}'))
    assert read_rows(SendSettings(features='{"a": "3\u00a0"}')) == [{"a": 3.0}]  # ASCII, no-break space around
    with pytest.raises(ConfigError, match=r"^--wait a: expected whole milliseconds"):
        _draft_from_flags(ScheduleSetSettings(models=("a",), wait=("a=\uff15\uff10",)), None)
    with pytest.raises(ConfigError, match=r"^--traffic: expected model=fraction"):
        _draft_from_flags(ScheduleSetSettings(models=("a", "b"), traffic="b=\u0660.5"), None)


def test_a_replay_of_the_topic_in_the_decoys_pod_is_not_refused_for_its_archive_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The decoy's pod sets RDV_ARCHIVE_DIR for the decoy: `replay --model M` there was refused as
    if --archive-dir had been typed beside the topic (a probe). Typed, it still is."""
    monkeypatch.setenv("RDV_ARCHIVE_DIR", str(tmp_path))
    settings = from_namespace(ReplaySettings, None, model="demo:challenger")
    assert settings.source == "topic" and settings.from_environment("archive_dir")
    with pytest.raises(ConfigError, match=r"^--archive-dir is read with --source archive only"):
        from_namespace(ReplaySettings, None, model="demo:challenger", archive_dir=str(tmp_path))


@pytest.mark.parametrize(("candidate", "said"), [
    ("canary", "canary is the canary, a fixed reference model"),
    ("", "promote: model ''"),
    ("bad name", "promote: model 'bad name': use letters"),
])  # fmt: skip
def test_promote_says_what_is_wrong_with_its_candidate_before_reading_kafka(candidate: str, said: str) -> None:
    """Each ended with 'no Kafka broker answered' (a probe): the candidate was looked at only after
    the schedule was read. NO_BROKER would be the error if anything were read first."""
    from services.cli.lifecycle import cmd_promote

    def no_figures(*_args: object) -> dict[str, float]:
        raise AssertionError("no figures are read for a candidate refused at once")

    with pytest.raises(ConfigError, match=re.escape(said)):
        cmd_promote(PromoteSettings(bootstrap=NO_BROKER), candidate, Console(), no_figures)


def test_promote_says_a_window_without_a_gate_measures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """--window without --require was accepted and ignored without a word (a review). Said, not
    refused: a candidate's own refusal (the canary, say) comes first."""
    import io

    from services.cli import lifecycle
    from services.cli.lifecycle import cmd_promote

    def no_topic(_settings: object, new: bool = False) -> None:
        raise BrokerUnavailable("the control topic is not read here")

    monkeypatch.setattr(lifecycle, "_book", no_topic)
    out = io.StringIO()
    with pytest.raises(BrokerUnavailable, match="not read here"):
        cmd_promote(from_namespace(PromoteSettings, None, bootstrap=NO_BROKER, window="5m"), "challenger",
                    Console(file=out, width=200), lambda *_a: {})
    assert "note: --window is how far back --require's figures are measured: with no --require" in out.getvalue()
    with pytest.raises(ConfigError, match="canary"):
        cmd_promote(from_namespace(PromoteSettings, None, bootstrap=NO_BROKER, window="5m"), "canary", Console(),
                    lambda *_a: {})


def test_a_schedule_file_giving_a_key_twice_is_refused(tmp_path: Path) -> None:
    """json kept the last of "models" given twice without a word (a probe): the file was taken for
    another schedule than the one written."""
    path = tmp_path / "s.json"
    path.write_text('{"models": ["a"], "models": ["b"]}')
    with pytest.raises(ConfigError, match=re.escape("s.json: key 'models' is given twice: one value each")):
        Schedule.from_file(path)
    path.write_text('{"models": ["a", "b"], "waits_ms": {"a": 5, "a": 6}}')
    with pytest.raises(ConfigError, match="key 'a' is given twice"):
        Schedule.from_file(path)


def test_a_decoy_manifest_nested_past_the_stack_is_one_error_line(tmp_path: Path) -> None:
    """A manifest of [[[...]]] ended in a RecursionError traceback (a probe)."""
    from services.decoy.archive import MANIFEST, read_manifest

    (tmp_path / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"archive manifest .* is unreadable"):
        read_manifest(tmp_path)


def test_deploying_the_rendezvous_with_a_models_options_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`deploy rendezvous --model demo:challenger` started rendezvous instances, the model dropped
    without a word (a probe)."""
    from services.cli.deploy import cmd_deploy

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^deploy rendezvous starts instances .*: --model, --co-host belong"):
        cmd_deploy(DeploySettings(model="demo:challenger", co_host=("c=demo:canary",)), "rendezvous", Console())
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_undeploying_what_was_never_deployed_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`undeploy nothere` said so, and left deployments/nothere/deploy.lock behind (a probe)."""
    from services.cli.deploy import cmd_undeploy

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^nothere is not deployed on this machine: nothing to undeploy"):
        cmd_undeploy("nothere", Console())
    assert not (tmp_path / "deployments" / "nothere").exists()


def test_free_text_paths_and_addresses_keep_what_the_checks_on_names_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a review of the start-up checks found refused that was fine: a pretty-printed JSON row,
    a comment of two lines, a variable ending in a newline (a ConfigMap from a file), a zone in an
    IPv6 address, an international host name, 127.1 to bind, a certificate's name with an escaped
    comma, RDV_MODEL beside `deploy rendezvous`, enable.auto.commit=f."""
    from services.cli.deploy import check_no_model_options
    from services.cli.send import SendSettings, read_rows
    from services.control.acl import Principals
    from services.core.urls import check_listen_address, checked_http_url

    assert read_rows(from_namespace(SendSettings, None, features='{\n\t"a": 1.5\n}')) == [{"a": 1.5}]
    assert from_namespace(PromoteSettings, None, comment="line one\nline two").comment == "line one\nline two"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k0:9092,\nk1:9092\n")
    assert from_namespace(KafkaSettings).bootstrap.startswith("k0:9092")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    zoned = from_namespace(KafkaSettings, None, bootstrap="[fe80::1%br-lan]:9092",
                           kafka_config=("enable.auto.commit=f",))
    assert zoned.librdkafka()["enable.auto.commit"] == "f"
    checked_http_url("http://m\u00fcnchen.de:8081", "--schema-registry")
    checked_http_url("http://[fe80::1%25vlan_10]:8081", "--schema-registry")
    for address in ("127.1", "0", "fe80::1%eth0", "::", "Gateway-0.svc"):
        check_listen_address(address, "--http-addr")
    assert Principals.from_pairs({"client": r"User:CN=Smith\, John,O=Acme\, Inc.,C=US"}).client.endswith("C=US")
    monkeypatch.setenv("RDV_MODEL", "demo:champion")  # set for the models' deployments: not typed
    check_no_model_options(from_namespace(DeploySettings, None))
    with pytest.raises(ConfigError, match="--version belong to a model's deployment"):
        check_no_model_options(from_namespace(DeploySettings, None, version="v2"))


def test_a_csv_header_with_spaces_after_its_commas_names_the_features_without_them(tmp_path: Path) -> None:
    """`a, b` sent the feature ' b', which no model reads; `a, a` was two features (a review)."""
    from services.cli.send import SendSettings, read_rows

    path = tmp_path / "rows.csv"
    path.write_text("mean_radius, mean_texture\n14.2, 19.1\n")
    assert read_rows(SendSettings(file=str(path))) == [{"mean_radius": 14.2, "mean_texture": 19.1}]
    path.write_text("a, a\n1,2\n")
    with pytest.raises(ConfigError, match="a feature name appears twice in the header"):
        read_rows(SendSettings(file=str(path)))


def test_a_feature_value_written_as_python_source_is_no_number_and_a_bad_byte_is_placed(tmp_path: Path) -> None:
    """float() read `1_000` as 1000.0, which no data format writes; a byte that is no UTF-8 on line 3
    was said to be 'byte 4 of a line' (its offset in the decoder's chunk)."""
    from services.cli.send import SendSettings, read_rows

    path = tmp_path / "rows.csv"
    path.write_text("a\n1_000\n")
    with pytest.raises(ConfigError, match=r"rows\.csv:2 column 'a': feature value '1_000' is not a number"):
        read_rows(SendSettings(file=str(path)))
    path.write_bytes(b"a\n1\n2\xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(line 3, byte 2 of the line\); binary file\?$"):
        read_rows(SendSettings(file=str(path)))


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_promote_and_rollback_say_a_fallback_is_not_scoring(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`schedule set` said it; promote and rollback dropped the note and published in silence (a review)."""
    import io

    from services.cli import lifecycle

    book = ScheduleBook("default")
    book.add(Schedule(models=("champion", "ghost"), version=1), START_MS - 20_000)
    book.add(Schedule(models=("challenger", "ghost"), version=2, effective_at=START_MS - 9_000), START_MS - 10_000)
    monkeypatch.setattr(lifecycle, "now_ms", lambda: START_MS)
    stub_control_topic(monkeypatch, book)
    monkeypatch.setattr(lifecycle, "live_models", lambda _config, _topic, _window: {
        (m, "1"): {"scores": 10.0, "errors": 0.0} for m in ("champion", "challenger")})
    monkeypatch.setattr(lifecycle, "workers", lambda _config, _prefix: None)  # the groups unlisted: scores alone
    out = io.StringIO()
    console = Console(file=out, width=200, no_color=True)
    if command == "promote":
        lifecycle.cmd_promote(from_namespace(PromoteSettings, None), "champion", console, lambda *_a: {})
    else:
        lifecycle.cmd_rollback(from_namespace(lifecycle.RollbackSettings, None), console)
    said = "note: fallback model(s) ghost sent no usable score in the last 60 s: published all the same"
    assert said in out.getvalue()


def test_a_rollback_held_back_to_a_pending_version_s_start_says_that_one_never_takes_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It said 'v2 takes effect only then': v3, starting with it, governs in its place (a review)."""
    import io

    from services.cli import lifecycle

    book = ScheduleBook("default")
    book.add(Schedule(models=("champion", "challenger"), version=1), START_MS - 20_000)
    book.add(Schedule(models=("challenger", "champion"), version=2, effective_at=START_MS + 3_600_000),
             START_MS - 10_000)
    monkeypatch.setattr(lifecycle, "now_ms", lambda: START_MS)
    published = stub_control_topic(monkeypatch, book)
    monkeypatch.setattr(lifecycle, "live_models", lambda _config, _topic, _window: {
        (m, "1"): {"scores": 10.0, "errors": 0.0} for m in ("champion", "challenger")})
    monkeypatch.setattr(lifecycle, "workers", lambda _config, _prefix: None)  # the groups unlisted: scores alone
    out = io.StringIO()
    lifecycle.cmd_rollback(from_namespace(lifecycle.RollbackSettings, None), Console(file=out, width=300,
                                                                                      no_color=True))
    said = " ".join(out.getvalue().split())
    assert published[0].models == ("champion", "challenger") and published[0].effective_at == START_MS + 3_600_000
    assert "this one governs in its place and v2 never does" in said, said
    book.add(published[0], START_MS)
    assert book.displaced_by(2) == 3


def test_a_promotion_gate_and_compare_say_their_progress_now_and_then_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gate over --window 1d, or compare --since 1d, in CI said nothing until its end: rich draws
    its status line and bar on a terminal only (a review)."""
    import io

    from services.cli import compare, lifecycle, shown

    now = [0.0]
    monkeypatch.setattr(lifecycle, "now_and_then", lambda err, label: shown.now_and_then(err, label, lambda: now[0]))
    monkeypatch.setattr(compare, "now_and_then", lambda err, label: shown.now_and_then(err, label, lambda: now[0]))

    def figures(_settings: object, _window: str, _candidate: str, _champion: str,
                progress: Callable[[int], None]) -> dict[str, float]:
        for _ in range(25):
            now[0] += 1.0
            progress(1_000)
        raise ConfigError("measured enough")

    book = ScheduleBook("default")
    book.add(Schedule(models=("champion", "challenger"), version=1), START_MS - 20_000)
    monkeypatch.setattr(lifecycle, "_book", lambda _settings, new=False: book)
    with pytest.raises(ConfigError, match="measured enough"):
        lifecycle.cmd_promote(from_namespace(PromoteSettings, None, require="agreement>=0.9"), "challenger",
                              Console(file=io.StringIO()), figures)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reading")]
    assert lines == ["reading the last 10m of the log: challenger against champion: 10,000 records",
                     "reading the last 10m of the log: challenger against champion: 20,000 records"]
    out = io.StringIO()
    bar, now[0] = compare._Bar(Console(file=out, width=200), "rdv.log"), 0.0
    bar.start(30_000)
    for _ in range(25):
        now[0] += 1.0
        bar.advance(1_000)
    bar.stop(completed=30_000)
    assert out.getvalue().splitlines() == ["reading rdv.log: 10,000 of at most 30,000 records",
                                           "reading rdv.log: 20,000 of at most 30,000 records"]


def test_schedule_set_says_which_waits_and_split_of_the_latest_version_it_drops() -> None:
    """The deadline is kept when not given, waits and a traffic split are not: dropped without a
    word (a review), which a promotion's waits then no longer had."""
    from services.cli.lifecycle import _not_carried_over

    current = Schedule(models=("champion", "challenger"), version=4, waits_ms={"champion": 50},
                       traffic_model="challenger", traffic_fraction=0.05)
    bare = from_namespace(ScheduleSetSettings, None, models="champion,challenger")
    (note,) = _not_carried_over(bare, current)
    assert note == ('v4\'s waits {"champion": 50} and traffic split challenger=0.05 are not carried over '
                    "(--wait / --traffic give them)")
    given = from_namespace(ScheduleSetSettings, None, models="champion,challenger", wait="champion=60",
                           traffic="challenger=0.1")
    assert _not_carried_over(given, current) == [] and _not_carried_over(bare, None) == []


def test_undeploy_is_not_refused_for_a_version_that_never_governs_and_names_a_pending_one_s_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion of challenger2 an hour ahead, then a rollback starting with it: v2 never governs,
    and undeploy challenger2 was refused for it, 'until the next version takes effect' (a review)."""
    from services.control.schedule import Schedule
    from services.core.runtime import now_ms

    now = now_ms()
    later = now + 3_600_000
    v1 = Schedule(models=("champion", "canary"), version=1)
    v2 = Schedule(models=("challenger2", "champion"), version=2, effective_at=later)
    v3 = Schedule(models=("champion", "canary"), version=3, effective_at=later)
    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    path = tmp_path / "deployments" / "challenger2" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "challenger2", "model": "demo:challenger", "replicas": {}}))
    from services.cli import deploy

    monkeypatch.setattr(deploy, "_read_from_broker", lambda _s, _c, _r: (ScheduleBook.holding(v1, v2, v3), set()))
    deploy._check_not_preferred("challenger2", deploy.UndeploySettings(), Console())  # not refused
    monkeypatch.setattr(deploy, "_read_from_broker", lambda _s, _c, _r: (ScheduleBook.holding(v1, v2), set()))
    with pytest.raises(ConfigError, match=r"challenger2 is what schedule default v2 answers with from 20"):
        deploy._check_not_preferred("challenger2", deploy.UndeploySettings(), Console())


def test_a_rescale_or_restart_in_a_shell_pointed_elsewhere_is_refused_and_names_are_this_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scale-up from a shell without the deployment's RDV_TOPIC_PREFIX started a replica scoring
    another deployment's requests, recorded with the others; a restart dropped a --version given;
    `deploy rendezvous` on two machines named both instances rendezvous-0, which fenced one
    another (a review)."""
    import socket

    from services.cli import deploy

    _deploy_without_kafka(tmp_path, monkeypatch)
    started: list[subprocess.Popen[bytes]] = []
    commands: list[list[str]] = []

    def spawn(args: list[str], log_file: Path, env: dict[str, str], *, detached: bool = False) -> object:
        commands.append(args)
        started.append(subprocess.Popen(["sleep", "60"], start_new_session=detached))
        return started[-1]

    monkeypatch.setattr(deploy, "spawn", spawn)
    monkeypatch.setattr(deploy, "wait_for_groups", lambda *_args, **_kwargs: None)
    monkeypatch.setattr(deploy, "_wait_for_starts", lambda *_args, **_kwargs: None)
    deployed = DeploySettings(model="demo:champion", version="v5", topic_prefix="p1.", bootstrap="b:9092")
    try:
        deploy.cmd_deploy(deployed, "ch", Console(file=io.StringIO()))
        host = socket.gethostname()
        assert commands[0][commands[0].index("--instance") + 1] == f"ch-{host}-0"
        for shell, said in ((DeploySettings(replicas=2, bootstrap="b:9092"), "--topic-prefix 'p1.'"),
                            (DeploySettings(replicas=2, topic_prefix="p1.", bootstrap="other:9092"),
                             "--bootstrap 'b:9092'"),
                            (DeploySettings(replicas=2, topic_prefix="p1.", bootstrap="b:9092",
                                            kafka_config=("acks=1",)), "--kafka-config (values not shown)")):
            with pytest.raises(ConfigError, match=re.escape(f"ch was deployed with {said}, not this command's")):
                deploy.cmd_deploy(shell, "ch", Console(file=io.StringIO()))
        deploy.cmd_deploy(DeploySettings(replicas=2, topic_prefix="p1.", bootstrap="b:9092"), "ch",
                          Console(file=io.StringIO()))
        assert len(started) == 2 and commands[1][commands[1].index("--version") + 1] == "v5"
        _kill_sessions(started)
        for process in started:
            process.wait(30)
        with pytest.raises(ConfigError, match=r"ch was deployed with 'demo:champion' \(version v5\)"):
            deploy.cmd_deploy(DeploySettings(version="v6", topic_prefix="p1.", bootstrap="b:9092"), "ch",
                              Console(file=io.StringIO()))
    finally:
        _kill_sessions(started)
    assert '"--version", "v5"' in deploy.compose_block("ch", deployed)


def test_undeploying_a_fallback_the_schedule_names_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped without a word: an answer whose preferred model fails then waits for it, to the
    deadline without a wait, before the fallbacks after it (a review)."""
    from services.cli import deploy

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    path = tmp_path / "deployments" / "challenger" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "challenger", "model": "demo:challenger", "replicas": {}}))
    book = ScheduleBook.holding(Schedule(models=("champion", "challenger", "canary"), version=1))
    monkeypatch.setattr(deploy, "_read_from_broker", lambda _s, _c, _r: (book, set()))
    out = io.StringIO()
    deploy._check_not_preferred("challenger", deploy.UndeploySettings(), Console(file=out, width=300))
    said = " ".join(out.getvalue().split())
    assert "note: challenger is a fallback of schedule default v1: while it is named, an answer whose preferred " \
           "model fails waits for it" in said
    quiet = io.StringIO()
    deploy._check_not_preferred("ghost", deploy.UndeploySettings(), Console(file=quiet, width=300))
    assert "fallback" not in quiet.getvalue()


@pytest.mark.parametrize("argv", [
    ["demo", "--budget", "2"], ["compare", "--max", "10"], ["send", "--wait", "3"], ["serve", "--deadline", "5"],
])  # fmt: skip
def test_a_commands_flag_is_not_taken_by_an_abbreviation(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Only the top-level parser refused them: `demo --budget 2` ran the demo on a 2 ms budget, every
    answer a TIMEOUT (a review)."""
    from services.cli.main import main

    with pytest.raises(SystemExit) as exited:  # taken, the command would fail on the broker instead, soon
        main([*argv, "--bootstrap", NO_BROKER, "--connect-timeout-s", "1"])
    assert exited.value.code == 2 and f"unrecognized arguments: {argv[1]}" in capsys.readouterr().err


def test_a_top_level_flag_after_the_command_is_said_to_go_before_it(capsys: pytest.CaptureFixture[str]) -> None:
    """`rendezvous serve --log-level DEBUG` pointed at `serve --help`, which does not list it (a review)."""
    from services.cli.main import main

    with pytest.raises(SystemExit):
        main(["serve", "--log-level", "DEBUG"])
    assert "(--log-level goes before the command: `rendezvous --log-level VALUE COMMAND ...`)" in \
        capsys.readouterr().err


def test_a_schedule_from_the_environment_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """RDV_MODELS is the demo's too, in another form: `schedule: model 'champion=demo:champion'`
    named neither --models nor the variable (a review)."""
    monkeypatch.setenv("RDV_MODELS", "champion=demo:champion")
    with pytest.raises(ConfigError, match=r"--models, --wait and --deadline-ms make no valid schedule: .* \(set in "
                                          r"the environment: --models by RDV_MODELS\)"):
        from_namespace(RendezvousSettings, bootstrap=NO_BROKER)


def test_deploy_rendezvous_refuses_trust_model_file() -> None:
    """A model's option, dropped without a word by `deploy rendezvous` (a review)."""
    from services.cli.deploy import check_no_model_options

    with pytest.raises(ConfigError, match="--trust-model-file belong to a model's deployment"):
        check_no_model_options(from_namespace(DeploySettings, None, trust_model_file=True))


def test_a_group_listing_the_broker_did_not_answer_is_an_error_not_an_empty_list() -> None:
    """Its errors were dropped: with the broker away the demo's check for something already serving
    its topics found nothing, and passed (a review)."""
    from services.core.errors import BrokerError
    from services.core.kafka import groups_with_members
    from services.localkafka.config import free_port

    with pytest.raises(BrokerError, match="cannot list the consumer groups"):
        groups_with_members({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0}, ["rdv."], timeout=1)


@pytest.mark.parametrize("argv", [["model", "--model", "demo:champion"], ["schedule", "--format", "json", "show"]])
def test_a_flag_before_the_action_word_is_said_to_go_after_it(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`rendezvous schedule --format json show` said "invalid choice: 'json'" and no more (a review)."""
    from services.cli.main import main

    with pytest.raises(SystemExit):
        main(argv)
    assert f"(the action comes before its flags: `rendezvous {argv[0]} ACTION --flag ...`)" in capsys.readouterr().err


def test_topic_overrides_separated_as_kafka_configs_are_told_the_separator(monkeypatch: pytest.MonkeyPatch) -> None:
    """RDV_KAFKA_CONFIG and RDV_PRINCIPAL split on ';', RDV_TOPIC on ',': `requests=x;scores=y` said
    only that 'x;scores=y' is no topic name (a review)."""
    monkeypatch.setenv("RDV_TOPIC", "requests=x;scores=y")
    with pytest.raises(ConfigError, match=r"is not a topic name Kafka accepts: .* \(several overrides are separated "
                                          r"by ','\)"):
        from_namespace(RendezvousSettings, bootstrap=NO_BROKER)


def test_a_misspelt_action_before_flags_gets_no_hint_about_the_order(capsys: pytest.CaptureFixture[str]) -> None:
    """`schedule sho --format json` was told the action comes before its flags, as it did (a review)."""
    from services.cli.main import main

    with pytest.raises(SystemExit):
        main(["schedule", "sho", "--format", "json"])
    said = capsys.readouterr().err
    assert "invalid choice: 'sho'" in said and "the action comes before" not in said


def test_a_listing_for_a_lag_column_keeps_what_answered(caplog: pytest.LogCaptureFixture) -> None:
    """Only a check that something is not there needs every broker's answer: `models`, which names
    each model's group for its lag, failed whenever one broker did not answer (a review)."""
    from services.core.kafka import consumer_groups
    from services.localkafka.config import free_port

    with caplog.at_level("WARNING"):
        assert consumer_groups({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0}, timeout=1) == []
    assert "the consumer groups listed are those of the brokers that answered" in caplog.text


def test_a_kafka_error_no_wrapper_foresaw_is_one_line_of_its_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """'error: Kafka client: KafkaError{code=_DESTROY_BROKER,val=-137,str="..."}' (a review)."""
    from confluent_kafka import KafkaError, KafkaException

    from services.cli import main as cli

    def fails(_args: Any) -> int:
        raise KafkaException(KafkaError(KafkaError._DESTROY_BROKER, "Failed to get watermark offsets: Local: "
                                                                    "Broker handle destroyed without termination"))

    monkeypatch.setattr(cli, "cmd_topics", fails)
    assert cli._run(["topics", "create", "--bootstrap", "b:9"]) == 2
    said = capsys.readouterr().err
    assert ("error: Kafka client: Failed to get watermark offsets: Local: Broker handle destroyed without "
            "termination\n") in said and "KafkaError{" not in said


def test_the_published_line_names_a_traffic_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """`schedule set ... --traffic champion=0.5` said the models and waits only (a review)."""
    import io

    from services.cli import lifecycle

    book = ScheduleBook("default")
    book.add(Schedule(models=("champion", "challenger"), version=1), START_MS - 20_000)
    monkeypatch.setattr(lifecycle, "now_ms", lambda: START_MS)
    stub_control_topic(monkeypatch, book)
    out = io.StringIO()
    draft = Schedule(models=("champion", "challenger"), traffic_model="challenger", traffic_fraction=0.25)
    lifecycle._publish_next(lifecycle.ScheduleSetSettings(), book, draft,
                            Console(file=out, width=300, no_color=True))
    assert "published default v2: ['champion', 'challenger'], traffic challenger=0.25 (effective in" in out.getvalue()


def test_a_schedule_file_that_supersedes_pending_versions_needs_the_flag_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file copied from an urgent version's JSON carries "supersedes_pending": true: the
    promotion pending for tomorrow was superseded for good, and said only after (a review)."""
    from services.cli import lifecycle
    from services.core.runtime import now_ms

    now = now_ms()
    book = ScheduleBook("default")
    book.add(Schedule(models=("a",), version=1, created_at=now - 10_000, effective_at=now - 10_000))
    book.add(Schedule(models=("b", "a"), version=2, created_at=now, effective_at=now + 3_600_000))
    monkeypatch.setattr(lifecycle, "_check_live", lambda *_args: [])
    published = stub_control_topic(monkeypatch, book)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"models": ["c", "a"], "supersedes_pending": True}))
    with pytest.raises(ConfigError, match=r"the file says \"supersedes_pending\": true, and v2 at .* would never take "
                                          r"effect: pass --supersede-pending as well"):
        lifecycle.cmd_schedule_set(from_namespace(ScheduleSetSettings, None, file=str(path)), Console(quiet=True))
    assert published == []
    settings = from_namespace(ScheduleSetSettings, None, file=str(path), supersede_pending=True)
    assert lifecycle.cmd_schedule_set(settings, Console(quiet=True)) == 0
    assert [(v.version, v.models, v.supersedes_pending) for v in published] == [(3, ("c", "a"), True)]


def test_the_demo_hears_that_its_tables_reader_went_away_while_nothing_is_written() -> None:
    """Piped, rich draws the live table only when it stops: `demo | less`, then q, ran on with
    nothing read until Ctrl-C (a review). A pipe with no reader is asked, and the console told."""
    from services.cli.common import console
    from services.cli.demo import reader_gone

    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as piped:
        table = console(file=piped, width=80)
        assert not reader_gone(table)  # read: nothing to say
        os.close(read_end)
        assert reader_gone(table) and table.quiet
    with open(os.devnull, "w") as nowhere:  # a file is never gone
        assert not reader_gone(console(file=nowhere, width=80))


@pytest.mark.parametrize(("status", "out", "expected"), [
    (1, "pipe", 1),  # a failure stays one, its reader gone (`set -o pipefail`; it read as success)
    (0, "closed", 0),  # started with stdout closed (`>&-`): no traceback from the flush
    (0, "full", 2),  # a full disk is an error of its own, said once
])
def test_a_commands_status_survives_its_output_going_nowhere(status: int, out: str, expected: int) -> None:
    script = ("import sys\nfrom services.cli import main as m\n"
              f"m._handled = lambda _h, _a: (print('x' * 100), {status})[1]\n"
              "sys.exit(m.main(['acl', 'show']))\n")
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    if out == "pipe":
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=buffered)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        code = proc.wait(60)
    else:
        target = "/dev/full" if out == "full" else None
        with open(target or os.devnull, "w") as sink:
            done = subprocess.run([sys.executable, "-c", script], stdout=sink if target else subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=buffered, timeout=60,
                                  close_fds=True, pass_fds=(), **({} if target else {"preexec_fn": _close_stdout}))
        code, stderr = done.returncode, done.stderr.decode()
    assert code == expected and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    if out == "full":
        assert "error: cannot write the output: No space left on device" in stderr


def _close_stdout() -> None:
    os.close(1)

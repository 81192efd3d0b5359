"""Settings resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.core.errors import ConfigError
from services.core.settings import KafkaSettings, Topics, from_namespace, redact
from services.localkafka.config import free_port
from services.model_worker.settings import WorkerSettings
from services.rendezvous.settings import RendezvousSettings


def test_settings_precedence_flag_over_env_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_LINGER_MS", "250")
    monkeypatch.setenv("RDV_MODELS", "a,b")
    settings = from_namespace(RendezvousSettings, None, deadline_ms="90")
    assert settings.linger_ms == 250 and settings.models == ("a", "b") and settings.deadline_ms == 90
    assert settings.schedule().models == ("a", "b")


def test_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_LINGER_MS", "soon")
    # Named as the environment's: the flag was never typed.
    with pytest.raises(ConfigError, match=r"^RDV_LINGER_MS \(the environment's --linger-ms\): expected a whole number"):
        from_namespace(RendezvousSettings)
    with pytest.raises(ConfigError, match=r"^--linger-ms: expected a whole number, got 'later'"):
        from_namespace(RendezvousSettings, None, linger_ms="later")
    # float() of a 400-digit number raised OverflowError while the message was made: a traceback.
    with pytest.raises(ConfigError, match=r"^--linger-ms must be at most .*, got 999999999999\.\.\. \(400 digits\)"):
        from_namespace(RendezvousSettings, None, linger_ms="9" * 400)


@pytest.mark.parametrize("typed", ["\u0663", "\uff11\uff10", "1\u0660"])
def test_a_number_in_digits_other_than_ascii_is_refused(typed: str) -> None:
    # int() reads Arabic-Indic or full-width digits as numbers: a paste gone wrong was taken (a probe).
    with pytest.raises(ConfigError, match=r"^--linger-ms: expected a whole number, got "):
        from_namespace(RendezvousSettings, None, linger_ms=typed)
    with pytest.raises(ConfigError, match=r"^--predict-timeout-s: expected a number, got "):
        from_namespace(WorkerSettings, None, predict_timeout_s=typed + ".5", model="demo:champion")
    with pytest.raises(ConfigError, match=r"^--wait a="):  # the rendezvous' own, parsed from its pairs
        from_namespace(RendezvousSettings, None, models=("a",), wait=(f"a={typed}",)).schedule()


def test_a_number_with_whitespace_around_it_still_reads() -> None:
    from services.core.numbers import ascii_float, ascii_int

    assert ascii_int(" 30\u00a0") == 30 and ascii_float("\t2.5 ") == 2.5  # a spreadsheet's no-break space
    with pytest.raises(ValueError, match="not an ASCII number"):
        ascii_float(" \u0663 ")


def test_secrets_never_in_repr_or_describe() -> None:
    settings = KafkaSettings(bootstrap="b:1", kafka_config=("security.protocol=SASL_SSL", "sasl.password=hunter2",
                                                            "acks=all", "sasl.mechanism=PLAIN"))
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.describe() and "acks" in settings.describe()
    assert redact({"ssl.key.password": "x"}) == {"ssl.key.password": "***"}
    assert settings.librdkafka()["sasl.password"] == "hunter2"


def test_every_command_paces_its_connections_unless_the_kafka_config_says_otherwise() -> None:
    """librdkafka's default pace (reconnect.backoff.ms=100) held a fresh client's first request
    ~48 ms before it reached the broker (bench/client_first_request.py)."""
    assert KafkaSettings(bootstrap="b:1").librdkafka()["reconnect.backoff.ms"] == "10"
    given = KafkaSettings(bootstrap="b:1", kafka_config=("reconnect.backoff.ms=250",))
    assert given.librdkafka()["reconnect.backoff.ms"] == "250"


def test_topic_overrides_and_unknown_roles() -> None:
    topics = Topics.from_prefix("p.", {"requests": "in"})
    assert topics.requests == "in" and topics.scores == "p.scores"
    with pytest.raises(ConfigError, match="unknown role"):
        Topics.from_prefix("p.", {"nonsense": "x"})


def test_list_flags_split_on_commas_but_kafka_config_keeps_them() -> None:
    import argparse

    from services.core.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, RendezvousSettings)
    args = parser.parse_args(["--models", "a,b", "--models", "c", "--kafka-config", "ssl.cipher.suites=x,y",
                              "--kafka-config", "security.protocol=SSL"])
    settings = from_namespace(RendezvousSettings, args)
    assert settings.models == ("a", "b", "c")
    assert settings.librdkafka()["ssl.cipher.suites"] == "x,y"


@pytest.mark.parametrize(("given", "said"), [
    ("a,,b", "item 2 of 3"), ("a, ,b,", "item 2 of 4"), ("a,b,,,c", "item 3 of 5"),
])  # fmt: skip
def test_an_empty_item_between_others_is_refused_by_position(given: str, said: str) -> None:
    """`--models a,,b` served a and b: the name meant between them was dropped (the misconfiguration
    probe). The value is not quoted: it may be a key pasted by mistake (its review)."""
    import argparse

    from services.core.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, RendezvousSettings)
    with pytest.raises(ConfigError, match=f"^--models: {said} is empty \\(a doubled ','\\?\\)$"):
        from_namespace(RendezvousSettings, parser.parse_args(["--models", given]))
    with pytest.raises(ConfigError, match=r"^--models: item 2 of 3 is empty \(a doubled ',' or an empty --models\?\)"):
        from_namespace(RendezvousSettings, parser.parse_args(["--models", "a", "--models", "", "--models", "b"]))
    # At either end, an empty item is dropped: `export RDV_KAFKA_CONFIG="$X;a=b"` with X unset.
    for ends in (" a , b ", "a,b,", ",a,b"):
        assert from_namespace(RendezvousSettings, parser.parse_args(["--models", ends])).models == ("a", "b")


def test_a_kafka_config_flag_is_one_setting_whatever_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password holding ';' was cut in two at it (and refused) when given with the flag."""
    import argparse

    from services.cli.spawn import service_env
    from services.core.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, RendezvousSettings)
    args = parser.parse_args(["--kafka-config", "sasl.password=ab;cd", "--kafka-config", "acks=all",
                              "--kafka-config", "sasl.oauthbearer.config=principal=admin scope=read",
                              "--kafka-config", "security.protocol=SASL_SSL", "--kafka-config", "sasl.mechanism=PLAIN"])
    settings = from_namespace(RendezvousSettings, args)
    assert settings.librdkafka()["sasl.password"] == "ab;cd" and settings.librdkafka()["acks"] == "all"
    assert settings.librdkafka()["sasl.oauthbearer.config"] == "principal=admin scope=read"  # not cut at the space
    monkeypatch.setenv("RDV_KAFKA_CONFIG", "acks=1;linger.ms=5")  # the variable's settings: one per ';'
    assert from_namespace(RendezvousSettings).librdkafka()["linger.ms"] == "5"
    with pytest.raises(ConfigError, match=r"--kafka-config sasl\.password: a value holding ';'") as err:
        service_env(settings)  # a child reads the variable: it would cut the value there
    assert "ab;cd" not in str(err.value)


@pytest.mark.parametrize(
    "command",
    ["serve", "model serve", "send", "demo", "topics create", "models", "deploy x", "promote x", "rollback",
     "schedule show", "decoy serve", "replay", "broker start"],
)
def test_every_command_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli.main import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command.split(), "--help"])
    assert exit_info.value.code == 0
    assert "usage: rendezvous" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "said"),
    [(["replay", "--since", "-5m"], "rendezvous replay: error: argument --since: expected one argument "
      "(a value that begins with '-' is written --since=-VALUE); see `rendezvous replay --help`"),
     (["replay", "--since"], "rendezvous replay: error: argument --since: expected one argument; "
      "see `rendezvous replay --help`"),
     (["model", "serve", "--bogus"], "rendezvous: error: unrecognized arguments: --bogus; "
      "see `rendezvous model serve --help`"),
     (["nosuch"], "rendezvous: error: argument COMMAND: invalid choice: 'nosuch'"),
     # A secret typed where argparse quotes what it read (a review): a flag before its command,
     # an abbreviated flag with its value (no abbreviation is taken: it is an unknown argument).
     (["--kafka-config", "sasl.password=hunter2xyz", "send"],
      "rendezvous: error: argument COMMAND: invalid choice: <a value, not shown> (choose from"),
     (["replay", "--s=http://bob:hunter2pw@reg:8081"],
      "rendezvous: error: unrecognized arguments: <a value, not shown>; see `rendezvous replay --help`")],
)
def test_a_mistake_on_the_command_line_is_one_line(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse printed its usage (about 20 lines for replay) above the error; `--since -5m` got no hint."""
    from services.cli.main import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser(argv).parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(said), err


def test_a_parser_reads_its_own_command_line_not_the_last_one_built(capsys: pytest.CaptureFixture[str]) -> None:
    """The command line was a class attribute: a parser built after another changed what the first read."""
    from services.cli.main import build_parser

    first = build_parser(["replay", "--since", "-5m"])
    build_parser(["replay", "--since", "5m"])
    with pytest.raises(SystemExit):
        first.parse_args(["replay", "--since", "-5m"])
    assert "is written --since=-VALUE" in capsys.readouterr().err


def test_metrics_listen_on_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.core.health import serve_http
    from services.model_worker.settings import WorkerSettings

    monkeypatch.delenv("RDV_METRICS_HOST", raising=False)
    settings = from_namespace(WorkerSettings, None, model="demo:champion")
    assert settings.metrics_host == "127.0.0.1"
    server = serve_http(free_port(), lambda: (True, "ok"), settings.metrics_host)
    assert server is not None
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("RDV_METRICS_HOST", "0.0.0.0")
    assert from_namespace(RendezvousSettings).metrics_host == "0.0.0.0"


def test_a_schedule_files_name_must_be_the_schedule_the_rendezvous_follows(tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text('{"name": "prod", "version": 3, "models": ["champion"]}')
    with pytest.raises(ConfigError, match="names schedule 'prod', not 'default': pass --schedule-name prod"):
        from_namespace(RendezvousSettings, None, schedule_file=str(path)).schedule()
    named = from_namespace(RendezvousSettings, None, schedule_file=str(path), schedule_name="prod").schedule()
    assert (named.name, named.version, named.models) == ("prod", 3, ("champion",))
    path.write_text('{"version": 3, "models": ["champion"]}')  # no name: the one followed
    unnamed = from_namespace(RendezvousSettings, None, schedule_file=str(path), schedule_name="prod").schedule()
    assert unnamed.name == "prod"


def test_a_conflict_of_several_flags_names_the_variables_that_set_some(monkeypatch: pytest.MonkeyPatch) -> None:
    """RDV_FEATURES left set and `send --file x.csv` said "give exactly one of --features, --file
    or --demo-rows", a flag nobody typed (the misconfiguration probe)."""
    from services.cli.send import SendSettings

    monkeypatch.setenv("RDV_FEATURES", '{"a": 1}')
    with pytest.raises(ConfigError, match=re.escape("or --demo-rows N (set in the environment: --features by "
                                                    "RDV_FEATURES)")):
        from_namespace(SendSettings, None, file="x.csv")
    monkeypatch.delenv("RDV_FEATURES")
    with pytest.raises(ConfigError, match=r"or --demo-rows N$"):
        from_namespace(SendSettings, None, file="x.csv", demo_rows=2)


def test_the_environment_note_names_every_other_flag_a_variable_set_and_no_quoted_value(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both set, only the opening flag's variable was named; and a value spelling a flag
    (`--start-from=--group`) was said to be set in the environment (the review)."""
    from services.gateway.settings import GatewaySettings
    from services.model_worker.settings import WorkerSettings

    monkeypatch.setenv("RDV_RATE_BURST_ROWS", "5")
    monkeypatch.setenv("RDV_MAX_ROWS", "10")
    monkeypatch.setenv("RDV_RATE_LIMIT_ROWS", "100")
    with pytest.raises(ConfigError, match=r"^RDV_RATE_BURST_ROWS \(the environment's --rate-burst-rows\) .*"
                                          r"\(set in the environment: --max-rows by RDV_MAX_ROWS\)$"):
        from_namespace(GatewaySettings, None, bootstrap="127.0.0.1:1")
    monkeypatch.setenv("RDV_GROUP", "g")
    with pytest.raises(ConfigError, match=r"^--start-from must be earliest or latest, got '--group'$"):
        from_namespace(WorkerSettings, None, model="demo:champion", start_from="--group", bootstrap="127.0.0.1:1")
    # The opener from the environment too: the apostrophe of "the environment's" paired with the
    # value's quote, and --group was said set (the review of the mend).
    monkeypatch.setenv("RDV_START_FROM", "--group")
    with pytest.raises(ConfigError, match=r"^RDV_START_FROM \(the environment's --start-from\) must be earliest or "
                                          r"latest, got '--group'$"):
        from_namespace(WorkerSettings, None, model="demo:champion", bootstrap="127.0.0.1:1")


def test_a_value_refused_by_a_command_names_the_variable_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """RDV_CO_HOST is the demo's true/false and a worker's list: left set, a worker said
    '--co-host expects NAME=SPEC', a flag nobody typed."""
    from services.model_worker.settings import WorkerSettings

    monkeypatch.setenv("RDV_CO_HOST", "0")
    with pytest.raises(ConfigError, match=re.escape("RDV_CO_HOST (the environment's --co-host) expects NAME=SPEC")):
        from_namespace(WorkerSettings, None, model="demo:champion")
    monkeypatch.delenv("RDV_CO_HOST")
    with pytest.raises(ConfigError, match=re.escape("--co-host expects NAME=SPEC")):
        from_namespace(WorkerSettings, None, model="demo:champion", co_host=("0",))
    from services.decoy.settings import DecoySettings

    monkeypatch.setenv("RDV_MAX_BATCH", "100")  # valid: a message naming it among others is not about it
    with pytest.raises(ConfigError, match=r"^--roll-mb must be above 0, got 0$"):
        from_namespace(DecoySettings, None, archive_dir="/tmp", roll_mb="0")


def test_schedule_set_refuses_a_file_naming_another_schedule_than_the_one_it_changes(tmp_path: Path) -> None:
    """`schedule set --file` published a file naming 'prod' as the next version of 'default'."""
    from services.cli.lifecycle import ScheduleSetSettings, _draft_from_flags

    path = tmp_path / "schedule.json"
    path.write_text('{"name": "prod", "version": 3, "models": ["champion"]}')
    with pytest.raises(ConfigError, match="names schedule 'prod', not 'default': pass --schedule-name prod"):
        _draft_from_flags(from_namespace(ScheduleSetSettings, None, file=str(path)), None)
    draft = _draft_from_flags(from_namespace(ScheduleSetSettings, None, file=str(path), schedule_name="prod"), None)
    assert (draft.name, draft.models) == ("prod", ("champion",))


def test_a_refused_key_that_is_not_shown_says_why() -> None:
    """It said only 'No such configuration property: "***"', hiding the key typed (a=1)."""
    from services.core.kafka import Consumer

    with pytest.raises(ConfigError) as refused:
        Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "hunter2": "1"})
    assert "hunter2" not in str(refused.value)
    assert 'No such configuration property: "***" (a key that does not look like a librdkafka property' \
        in str(refused.value)
    with pytest.raises(ConfigError, match=r'"sasl.mechansim".*did you mean sasl.mechanism\?') as typo:
        Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "sasl.mechansim": "PLAIN"})
    assert "is not shown" not in str(typo.value)


@pytest.mark.parametrize("key", ["message.max.bytes", "batch.size"])
def test_a_size_the_producer_reads_itself_is_refused_in_one_line_when_not_a_number(key: str) -> None:
    """Read before librdkafka checks the configuration, `1MB` was a ValueError's traceback (a review)."""
    from services.core.kafka import Producer

    config = from_namespace(KafkaSettings, kafka_config=(f"{key}=1MB",), bootstrap="127.0.0.1:1").librdkafka()
    with pytest.raises(ConfigError, match=f"^--kafka-config: {key} must be a whole number of bytes$"):
        Producer(config, topic_limits={"rdv.scores": 1_048_588})


def test_every_example_in_the_help_parses_and_every_subcommand_has_a_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--help` of send, compare, models, deploy, promote and others showed only usage and options."""
    import shlex

    from services.cli.examples import EXAMPLES
    from services.cli.main import build_parser

    for path, lines in EXAMPLES.items():
        for line in lines:
            argv = shlex.split(line.split("  #")[0])[1:]  # without `rendezvous` and the comment
            assert argv[: len(path)] == list(path), line
            build_parser(argv).parse_args(argv)  # a flag that does not exist exits (SystemExit 2)
    for command in ("send", "compare", "models", "deploy x", "promote x", "schedule set", "acl show"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command.split(), "--help"])
        text = capsys.readouterr().out
        description = text.split("\n\n")[1]  # what follows the usage
        assert not description.startswith(("options:", "positional arguments:")), text[:400]


@pytest.mark.parametrize(("flags", "refusal"), [
    ({"models": "a,b", "traffic": "b=5"}, "traffic fraction must be within"),
    ({"models": "a,a"}, "a model is listed twice"),
    ({"models": "a,b", "wait": "zz=50"}, "waits name models not in the schedule"),
])
def test_schedule_set_refuses_a_bad_schedule_before_the_broker_is_asked(flags: dict[str, str], refusal: str) -> None:
    """These were refused only once the control topic was read: with a slow broker, after
    --connect-timeout-s, and with no broker as 'no Kafka broker answered'."""
    from services.cli.lifecycle import ScheduleSetSettings

    with pytest.raises(ConfigError, match=refusal):  # the settings' own validation, before any command runs
        from_namespace(ScheduleSetSettings, None, bootstrap="127.0.0.1:1", **flags)


def test_a_message_holding_what_a_user_typed_is_printed_whatever_it_holds() -> None:
    """A comment `revert [/] bad wait` is rich markup that closes nothing: `schedule set` died with
    a traceback after publishing (a retry published a second version), `demo --bootstrap '[/x]:9092'`
    before starting (a review)."""
    import io

    from services.cli.common import console

    out = io.StringIO()
    shown = console(file=out, width=200)
    shown.print("published default v3: ['champion'] (effective in 0s; revert [/] bad wait)")
    shown.print("[bold]broker[/]: [/x]:9092")
    assert out.getvalue().splitlines() == ["published default v3: ['champion'] (effective in 0s; revert [/] bad wait)",
                                           "[bold]broker[/]: [/x]:9092"]


def test_a_setting_holding_bytes_that_are_not_utf8_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Such bytes reach Python as lone surrogates; the Kafka client's constructor failed on them
    with a SystemError traceback (a review)."""
    not_utf8 = b"h\xe9st:1".decode("utf-8", "surrogateescape")
    with pytest.raises(ConfigError, match=r"^--bootstrap: holds bytes that are not UTF-8 text$"):
        from_namespace(KafkaSettings, bootstrap=not_utf8)
    with pytest.raises(ConfigError, match=r"^--kafka-config: holds bytes that are not UTF-8 text$"):
        from_namespace(KafkaSettings, bootstrap="127.0.0.1:1", kafka_config=(f"client.id={not_utf8}",))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", not_utf8)
    with pytest.raises(ConfigError, match=r"^KAFKA_BOOTSTRAP_SERVERS \(the environment's --bootstrap\): holds bytes"):
        from_namespace(KafkaSettings)


def test_a_metrics_host_that_cannot_be_encoded_is_a_one_line_error() -> None:
    from services.core.health import serve_http

    with pytest.raises(ConfigError, match=r"cannot serve metrics/health on 'a\.\.ü':19999"):
        serve_http(19999, lambda: (True, ""), "a..ü")


@pytest.mark.parametrize("flag", ["--principal", "--wait", "--topic"])
def test_a_key_given_twice_in_key_value_flags_is_refused_not_replaced(flag: str) -> None:
    """`acl show --principal client=alice --principal client=bob` granted alice nothing (a review)."""
    from services.core.settings import parse_pairs

    with pytest.raises(ConfigError, match=rf"^{flag} client is given twice: one value each$"):
        parse_pairs(("client=alice", "gateway=g", "client=bob"), flag)
    assert parse_pairs(("client=alice", "gateway=g"), flag) == (("client", "alice"), ("gateway", "g"))


@pytest.mark.parametrize("module", ["rendezvous", "model_worker", "comparison", "decoy"])
def test_a_batch_larger_than_one_poll_may_ask_for_is_refused_at_start(module: str) -> None:
    """confluent-kafka's consume() refuses more than 1,000,000 records: --max-batch 2000000 was
    accepted, and the service died with a traceback on its first record (a review)."""
    import importlib

    settings_module = importlib.import_module(f"services.{module}.settings")
    cls = next(v for k, v in vars(settings_module).items() if k.endswith("Settings") and k != "ServiceSettings"
               and isinstance(v, type) and v.__module__ == settings_module.__name__)
    with pytest.raises(ConfigError, match=r"--max-batch must be at most 1000000"):
        from_namespace(cls, bootstrap="127.0.0.1:1", max_batch="2000000")


@pytest.mark.parametrize("signum", [15, 1])  # SIGTERM, SIGHUP
def test_a_command_stopped_by_a_signal_runs_its_clean_up(signum: int, tmp_path: Path) -> None:
    """SIGTERM ended a command at once, its clean-up skipped: the demo's broker, a registry still
    starting and a deploy's half-started replicas were left running (a review). It ends now as
    Ctrl-C does, with 128 + the signal's number."""
    import subprocess
    import sys

    script = tmp_path / "command.py"
    script.write_text(
        "import argparse, os, sys\n"
        "import services.cli.main as cli\n"
        "def command(_args):\n"
        "    try:\n"
        f"        os.kill(os.getpid(), {signum})\n"
        "        return 0\n"
        "    finally:\n"
        "        print('cleaned up', flush=True)\n"
        "class Parser:\n"
        "    def parse_args(self, _argv):\n"
        "        return argparse.Namespace(handler=command, log_level='warning')\n"
        "cli.build_parser = lambda *_args: Parser()\n"
        "sys.exit(cli.main([]))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert (done.returncode, done.stdout) == (128 + signum, "cleaned up\n"), done.stderr


def test_a_flag_given_over_its_variable_is_said(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The flag wins; RDV_KAFKA_CONFIG's SASL settings went without a word when --kafka-config
    acks=all was added to a command (a probe)."""
    import argparse

    monkeypatch.setenv("RDV_KAFKA_CONFIG", "sasl.password=S3CRET;security.protocol=SASL_SSL")
    args = argparse.Namespace(kafka_config=["acks=all"])
    with caplog.at_level("WARNING", logger="services.core.settings"):
        settings = from_namespace(KafkaSettings, args)
    assert settings.kafka_config == ("acks=all",)
    assert "--kafka-config is given: RDV_KAFKA_CONFIG, set too, is not used" in caplog.text
    assert "S3CRET" not in caplog.text
    caplog.clear()
    monkeypatch.delenv("RDV_KAFKA_CONFIG")
    from_namespace(KafkaSettings, args)
    assert caplog.text == ""


def test_help_gives_every_number_its_range() -> None:
    """Only numbers with bounds of their own showed them; the others are bounded too (INT_RANGE,
    FLOAT_RANGE), and a value past one was refused with a range --help never gave (a probe)."""
    import argparse

    from services.core.settings import INT_RANGE, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, RendezvousSettings)
    helps = {action.dest: action.help or "" for action in parser._actions}
    assert helps["linger_ms"].endswith(f"default: 1000; 1..{INT_RANGE[1]}]")  # its own lower bound
    assert helps["model_ttl_s"].endswith("default: 30.0; 0..1000000000]")  # the float default range
    assert all(".." in helps[f] for f in ("orphan_grace_ms", "commit_interval_ms", "max_batch"))
    assert ".." not in helps["models"]
    from services.cli.demo import DemoSettings
    from services.cli.replay import ReplaySettings

    for cls, name, said in ((DemoSettings, "rate", "above 0, at most 1000000000]"),
                            (DemoSettings, "rendezvous", "default: 1; 1..2147483647]"),
                            (ReplaySettings, "batch", "default: 1000; 1..2147483647]")):  # refused below 1
        parser = argparse.ArgumentParser()
        add_arguments(parser, cls)
        assert next(a.help or "" for a in parser._actions if a.dest == name).endswith(said)


@pytest.mark.parametrize(("overrides", "prefix", "said"), [
    ({"requests": "__consumer_offsets"}, "rdv.", "--topic: '__consumer_offsets' (requests) starts with '__'"),
    ({}, "__rdv.", "--topic-prefix: '__rdv.requests' (requests) starts with '__'"),
])  # fmt: skip
def test_a_topic_named_as_kafkas_internal_ones_is_refused(overrides: dict[str, str], prefix: str, said: str) -> None:
    """`--topic requests=__consumer_offsets` was taken: `acl show` granted the admin ALL on it (a probe)."""
    with pytest.raises(ConfigError, match=re.escape(said)):
        Topics.from_prefix(prefix, overrides)
    assert Topics.from_prefix("rdv_", {}).requests == "rdv_requests"  # one '_' is a name like any other


def test_settings_given_the_local_broker_still_know_what_the_command_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """with_bootstrap copied them with dataclasses.replace when the bootstrap came from the local
    broker: every default given was taken for not given (`rollback --to 0` published a rollback,
    refused with --bootstrap; the unused-seed warning never came), and a variable for a flag given
    (a review)."""
    from services.cli import common
    from services.cli.deploy import DeploySettings
    from services.cli.lifecycle import RollbackSettings
    from services.cli.main import build_parser

    monkeypatch.setattr(common, "read_bootstrap", lambda: "127.0.0.1:9092")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    parser = build_parser()
    rollback = common.with_bootstrap(from_namespace(RollbackSettings, parser.parse_args(["rollback", "--to", "0"])))
    assert rollback.bootstrap == "127.0.0.1:9092" and rollback.given("to") == ["to"]
    serve = common.with_bootstrap(from_namespace(RendezvousSettings, parser.parse_args(
        ["serve", "--models", "champion", "--deadline-ms", "200"])))
    assert serve.seeded_by() == ["models", "deadline_ms"]
    monkeypatch.setenv("RDV_MODEL", "demo:champion")
    deploy = common.with_bootstrap(from_namespace(DeploySettings, parser.parse_args(["deploy", "rendezvous"])))
    assert deploy.from_environment("model")

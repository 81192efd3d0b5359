"""`rendezvous deploy|undeploy`: run a model's workers (or rendezvous instances) on this machine.

Each replica is a detached `rendezvous model serve` (or `serve`) process that outlives this
command, with its log and the deployment's pids under `<cache>/deployments/<name>/`. Deploying
again with another `--replicas` scales it mid-stream. The processes get this command's Kafka
settings (cli/spawn.py). The same worker runs in docker-compose; `deploy` prints the service
block to add there instead.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

from services.cli.shown import print_note
from services.cli.spawn import service_env, spawn
from services.control.schedule import DEFAULT_NAME, check_schedule_name
from services.control.topic import UnusableControlTopic
from services.core.errors import BrokerError, ConfigError, RendezvousError
from services.core.files import write_whole
from services.core.kafka import group_member_count, partition_counts, wait_for_broker, wait_for_groups
from services.core.ranges import format_ms
from services.core.runtime import now_ms
from services.core.settings import KafkaSettings, replaced, setting
from services.localkafka.config import cache_dir
from services.localkafka.jars import locked
from services.model_worker.models import load_model
from services.model_worker.models.loader import MODEL_FILE_SUFFIXES
from services.model_worker.settings import (
    check_co_hosted_names,
    check_model_name,
    model_group,
    parse_co_host,
    parse_start_at,
    trust_model_file_setting,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


MAX_REPLICAS = 256  # processes of one deployment on one machine; beyond the requests partitions they stand by


@dataclass(frozen=True)
class DeploySettings(KafkaSettings):
    """Start (or stop) the workers of one model."""

    model: str = setting("", "deploy: model spec (demo:challenger, pkg.module:factory, model.skops, model.onnx; "
                             "a .joblib/.pkl file with --trust-model-file only, docs/model-files.md); "
                             "not needed to scale a running deployment, nor for `deploy rendezvous`.")
    replicas: int = setting(1, "deploy: processes sharing the group; deploying again with another number scales it.",
                            minimum=1, maximum=MAX_REPLICAS)
    version: str = setting("", "deploy: version written on its scores (default: the model's own).", identifier=True)
    start_at: str = setting("", "deploy: catch up from this time (ISO, epoch ms, or e.g. 1h ago as '1h') first.")
    start_from: str = setting(
        "latest", "deploy: where a new deployment starts without --start-at: latest (the requests from now on) or "
        "earliest (every request the topic still holds, scored before it catches up with the live ones)."
    )
    wait_s: float = setting(60.0, "deploy: how long to wait for the replicas to join their group (s).")
    trust_model_file: bool = trust_model_file_setting()
    co_host: tuple[str, ...] = setting(
        (), "deploy: more models the same workers score with, NAME=SPEC,... (`model serve --co-host`); "
        "their group is then <prefix>model.<name>+<name>..."
    )

    def validate(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"--start-from must be earliest or latest, got {self.start_from!r}")
        # Here, not in a detached replica, whose error only its log would show.
        parse_start_at(self.start_at, now_ms())
        parse_co_host(self.co_host)

    def model_names(self, name: str) -> list[str]:
        """The deployment's own model, then its co-hosted ones."""
        return [name, *(co_name for co_name, _ in parse_co_host(self.co_host))]


RENDEZVOUS = "rendezvous"  # `deploy rendezvous --replicas N`: instances of the rendezvous itself


def _state_file(name: str) -> Path:
    return cache_dir() / "deployments" / name / "state.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _identity(pid: int) -> str | None:
    """Which process `pid` is: this boot's id and the process's start time (None without /proc).
    A pid alone is reused: after a reboot or long enough, a deployment's recorded pid names some
    other process, which `deploy` counted as its replica and `undeploy` killed (its process group)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{boot}/{stat[stat.rindex(')') + 2:].split()[19]}"  # field 22, starttime, after the name


def _zombie(pid: int) -> bool:
    """Exited but not reaped (its parent, this command, is gone and init has not reaped it yet):
    kill(pid, 0) still finds it, and a dead replica was taken for a running one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux), or gone meanwhile: kill(pid, 0) decides
    return stat[stat.rindex(")") + 2:].startswith("Z")  # the state follows the name in parentheses


def _state(name: str) -> dict[str, Any]:
    path = _state_file(name)
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("replicas", {}), dict):
            raise ValueError("not a deployment's state")
        return state
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the state of deployment {name} ({path}: {exc}); stop its processes "
                          "yourself if any still run, and delete the file") from None


def _replicas(name: str) -> dict[int, int]:
    """Live replicas of a deployment: replica index -> pid (a pid now naming another process is none:
    `_identity`; a record written before identities were kept trusts its pids)."""
    state = _state(name)
    try:
        replicas = {int(k): int(v) for k, v in state.get("replicas", {}).items()}
        identities = {int(k): str(v) for k, v in state.get("identities", {}).items()}
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(f"cannot read the replicas of deployment {name} in {_state_file(name)}; stop its "
                          "processes yourself if any still run, and delete the file") from None
    return {index: pid for index, pid in replicas.items()
            if _alive(pid) and (index not in identities or identities[index] == _identity(pid))}


def _record(name: str, settings: DeploySettings, replicas: dict[int, int]) -> None:
    """The deployment's state file, naming `replicas` (index -> pid) and how they were started:
    model files by their absolute paths, and those trusted with --trust-model-file by digest."""
    identities = {index: identity for index, pid in replicas.items() if (identity := _identity(pid)) is not None}
    _write_state(name, {"name": name, "model": _anchored(settings.model), "version": settings.version,
                        "co_host": [_anchored_co_host(item) for item in settings.co_host], "replicas": replicas,
                        "identities": identities, "trusted": settings.trust_model_file,
                        "trusted_files": _file_digests(settings) if settings.trust_model_file else {},
                        "start_from": settings.start_from, "topic_prefix": settings.topic_prefix,
                        "connection": _connection(settings)})


def _anchored(spec: str) -> str:
    """A model spec naming a model file by its absolute path: a rescale or restart from another
    directory loaded the file of that name there (a review)."""
    path = _model_file(spec)
    return os.path.abspath(path) if path is not None else spec


def _anchored_co_host(item: str) -> str:
    """A co-hosted `name=spec`, its spec `_anchored`."""
    name, _, spec = item.partition("=")
    return f"{name}={_anchored(spec)}"


def _model_file(spec: str) -> Path | None:
    """The file a model spec names, if it names one (demo: and module:factory specs do not)."""
    spec = spec.strip()
    return Path(spec).expanduser() if spec.lower().endswith(MODEL_FILE_SUFFIXES) else None


def _file_digests(settings: DeploySettings) -> dict[str, str]:
    """sha256 of every model file the deployment's specs name, by absolute path."""
    digests = {}
    for spec in (settings.model, *(item.partition("=")[2] for item in settings.co_host)):
        path = _model_file(spec)
        if path is not None:
            where = os.path.abspath(path)
            try:
                stat = path.stat()
                digests[where] = _digest(where, stat.st_mtime_ns, stat.st_size)
            except OSError:
                digests[where] = ""  # unreadable now: no later file matches it
    return digests


@functools.lru_cache(maxsize=64)
def _digest(path: str, _mtime_ns: int, _size: int) -> str:
    """sha256 of a file read in chunks, once per command while it is unchanged (each replica's
    record asked it again: a 512 MiB model read whole five times for four replicas; a review)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _connection(settings: KafkaSettings) -> dict[str, Any]:
    """Where a deployment's replicas read and write: its broker, topic names and client settings,
    these by digest (they may hold secrets, and the state file is plain JSON)."""
    secret = hashlib.sha256("\n".join(sorted(settings.kafka_config)).encode()).hexdigest()
    return {"bootstrap": settings.bootstrap, "topic_prefix": settings.topic_prefix,
            "topics": sorted(settings.topic), "kafka_config_sha256": secret}


def _check_same_connection(name: str, settings: DeploySettings, state: dict[str, Any]) -> None:
    """A rescale or restart reads the shell's settings: another topic prefix, topic name, broker or
    client setting there started a replica scoring another deployment's requests, beside the
    others and recorded with them (a review). Refused, naming what differs."""
    recorded, given = state.get("connection"), _connection(settings)
    if not isinstance(recorded, dict):
        return  # a state file of a release before: nothing recorded to compare
    differ = [key for key in given if key in recorded and recorded[key] != given[key]]
    if differ:
        named = ["--kafka-config (values not shown)" if key == "kafka_config_sha256" else
                 f"{_FLAGS[key]} {recorded[key]!r}" for key in differ]
        raise ConfigError(f"{name} was deployed with {'; '.join(named)}, not this command's: give the same (as flags "
                          f"or RDV_ variables), or `rendezvous undeploy {name}` first")


_FLAGS = {"bootstrap": "--bootstrap", "topic_prefix": "--topic-prefix", "topics": "--topic"}


def _write_state(name: str, state: dict[str, Any]) -> None:
    """Written whole or not at all (a crash mid-write left a file every later command failed on),
    readable by its owner alone: it holds an unsalted digest of the Kafka settings, a password's
    among them, which another local user could guess offline (a review)."""
    write_whole(_state_file(name), json.dumps(state), mode=0o600)


def running_pids(name: str) -> list[int]:
    return sorted(_replicas(name).values())


def _replica_args(name: str, settings: DeploySettings, index: int) -> list[str]:
    if name == RENDEZVOUS:
        return ["serve", "--instance", _instance(RENDEZVOUS, index)]
    return _model_serve_args(name, settings, _instance(name, index))


def _model_serve_args(name: str, settings: DeploySettings, instance: str | None = None) -> list[str]:
    """The `model serve` command line of a model's deployment: a replica's (with its `instance`) and
    the Compose block's alike (the block's had drifted: it lacked --version)."""
    args = ["model", "serve", "--model", settings.model, "--name", name]
    args += ["--instance", instance] if instance else []
    args += ["--version", settings.version] if settings.version else []
    args += ["--start-at", settings.start_at] if settings.start_at else []
    args += ["--start-from", settings.start_from]
    args += ["--trust-model-file"] if settings.trust_model_file else []
    args += ["--co-host", ",".join(settings.co_host)] if settings.co_host else []
    return args


def _instance(name: str, index: int) -> str:
    """A replica's --instance: its static group membership and transactional id, stable across its
    restarts, and this machine's (`rendezvous-0` on two machines fenced one another: the first
    stopped within seconds, its state naming a dead pid; a review)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100] or "host"
    return f"{name}-{host}-{index}"


def _group(name: str, settings: DeploySettings) -> str:
    if name == RENDEZVOUS:
        return f"{settings.topic_prefix}{RENDEZVOUS}"
    return model_group(settings.topic_prefix, settings.model_names(name))


def _check_models(name: str, settings: DeploySettings) -> None:
    """Fail here, with the loader's message, not in a detached process."""
    if not settings.model:
        raise ConfigError("deploy needs --model SPEC")
    check_co_hosted_names(settings.model_names(name))
    for spec in [settings.model, *(spec for _, spec in parse_co_host(settings.co_host))]:
        load_model(spec, trust_model_file=settings.trust_model_file)


@contextlib.contextmanager
def _one_at_a_time(name: str, console: Console) -> Iterator[None]:
    """One deploy or undeploy of a deployment at a time: two at once each read its state, each
    started a replica, and the last to write its state won, the other's replica running where
    no undeploy finds it (a review). An flock: released when its holder dies, never stale."""
    with locked(_state_file(name).with_name("deploy.lock"),
                lambda: console.print(f"another deploy or undeploy of {escape(name)} is running: waiting for it")):
        yield


def cmd_deploy(settings: DeploySettings, name: str, console: Console) -> int:
    """Start a deployment, or change its number of replicas (the group rebalances; a replica
    leaving commits its finished work first, so nothing is lost or scored twice)."""
    check_model_name(name, "deployment name")
    if name == RENDEZVOUS:
        check_no_model_options(settings)
    with _one_at_a_time(name, console):
        return _deploy(settings, name, console)


def check_no_model_options(settings: DeploySettings) -> None:
    """`deploy rendezvous` runs instances of the rendezvous: a model's options given to it were
    dropped without a word (a probe). Typed ones only: a variable (RDV_MODEL) may be set for the
    models' deployments of the same shell."""
    model_options = (("--model", "model"), ("--version", "version"), ("--co-host", "co_host"),
                     ("--start-at", "start_at"), ("--trust-model-file", "trust_model_file"))
    typed = [flag for flag, field in model_options if getattr(settings, field) and not settings.from_environment(field)]
    if typed:
        raise ConfigError(f"deploy {RENDEZVOUS} starts instances of the rendezvous, which score no model: "
                          f"{', '.join(typed)} belong to a model's deployment")


def _deploy(settings: DeploySettings, name: str, console: Console) -> int:
    replicas = _replicas(name)
    state = _state(name)
    if replicas or (state.get("model") and not settings.model):
        running = (state.get("model", ""), state.get("version", ""), tuple(state.get("co_host", ())))
        # As recorded: model files by their absolute paths (the same relative --model, repeated from
        # the same directory with another --replicas, was refused as another model; a review).
        given = (_anchored(settings.model), settings.version,
                 tuple(_anchored_co_host(item) for item in settings.co_host))
        if any(value and value != now for value, now in zip(given, running, strict=True)):
            # Replicas of one group must score alike: a new model is a new deployment (or undeploy first).
            # A restart too: it started the model as deployed, the --version given dropped without a word.
            how = "runs" if replicas else "was deployed with"
            raise ConfigError(f"{name} {how} {running[0]!r} (version {running[1] or 'default'}): deploy another "
                              f"model under another name, or `rendezvous undeploy {name}` first")
        _check_same_connection(name, settings, state)
        if not replicas:  # every replica exited (killed, crashed): started again as it was deployed
            console.print(f"{name}: none of its replicas runs any more; starting it again as deployed "
                          f"({running[0]})")
        settings = as_deployed(settings, state)
    if name != RENDEZVOUS and not replicas:
        _check_models(name, settings)
    if replicas and len(replicas) == settings.replicas:
        console.print(f"{name} already runs {settings.replicas} replica(s): pids {sorted(replicas.values())}")
        return 0
    # Said now, in one line: a replica started without a broker only says so in its own log.
    wait_for_broker(settings.librdkafka(), settings.connect_timeout_s)
    _note_idle_replicas(settings, console)
    folder = _state_file(name).parent
    env = service_env(settings)
    started: dict[int, subprocess.Popen[bytes]] = {}
    new_deployment = not replicas
    if new_deployment and name != RENDEZVOUS and _committed_before(settings, _group(name, settings)):
        print_note(console, f"group {_group(name, settings)} holds the positions of an earlier deployment of {name}: "
                   "it resumes there, scoring what came since, whatever --start-from or --start-at say (deploy "
                   "under another name to start afresh)")
    try:
        for index in range(settings.replicas):
            if index not in replicas:
                started[index] = spawn(_replica_args(name, settings, index), folder / f"replica-{index}.log", env,
                                       detached=True)
                replicas[index] = started[index].pid
                # Recorded at once: a replica runs in a session of its own, and one this command
                # started but no state names would outlive it where `undeploy` cannot find it.
                _record(name, settings, replicas)
    except BaseException:  # a spawn refused, Ctrl-C, SIGTERM: nothing half-deployed is left running
        _stop([process.pid for process in started.values()])
        before = {index: pid for index, pid in replicas.items() if index not in started}
        if before or not new_deployment:
            _record(name, settings, before)
        else:
            _state_file(name).unlink(missing_ok=True)
        raise
    surplus = {index: pid for index, pid in replicas.items() if index >= settings.replicas}
    _stop(list(surplus.values()))
    kept = {index: pid for index, pid in replicas.items() if index < settings.replicas}
    _record(name, settings, kept)
    waited_until = time.monotonic() + settings.wait_s
    try:
        wait_for_groups(settings.librdkafka(), [_group(name, settings)], timeout=settings.wait_s,
                        members=settings.replicas, check=lambda: _none_exited(started, folder))
    except BrokerError as err:  # they were started and go on starting: said, not left to be found
        raise BrokerError(f"{err}: {name}'s {settings.replicas} replica(s) are started (pids {sorted(kept.values())}) "
                          f"and go on starting; logs in {folder}; `rendezvous models` shows when they score, "
                          f"`rendezvous undeploy {name}` stops them") from None
    except ConfigError as err:  # one replica exited: the others run on, recorded, and that is said too
        still = sorted(pid for index, pid in kept.items() if index not in started or started[index].poll() is None)
        raise ConfigError(f"{err}; {name}'s other replicas run on (pids {still}): "
                          f"`rendezvous undeploy {name}` stops them") from None
    if new_deployment and name != RENDEZVOUS and (settings.start_from == "latest" or settings.start_at):
        # Under earliest nothing is committed at assignment: there is no start to wait for.
        _wait_for_starts(settings, _group(name, settings), waited_until, console,
                         check=lambda: _none_exited(started, folder))
    console.print(f"{name} runs {settings.replicas} replica(s): pids {sorted(kept.values())}, logs in {folder}")
    if name != RENDEZVOUS and new_deployment:  # a rescale's model may be the champion by now (a review)
        console.print(f"it scores every request; unless the schedule answers with it already, its answers are only "
                      f"logged until you `rendezvous promote {name}`.")
        console.print("In docker-compose, add instead:\n" + compose_block(name, settings))
    return 0


def as_deployed(settings: DeploySettings, state: dict[str, Any]) -> DeploySettings:
    """The settings a deployment's new replicas start with (a scale-up, or a restart after every
    replica exited): its model, version and co-hosted models, as deployed. A model file trusted
    then stays trusted while its bytes are those trusted (they refused it and exited when a
    scale-up did not pass --trust-model-file again; carried by name alone, a pickle put in its
    place, or one of that name in the shell's directory, ran without a word: a review); and it
    starts where it was deployed to start (a replica of an `earliest` deployment started as
    `latest`, and partitions it took before any commit skipped the backlog)."""
    deployed = replaced(
        settings, model=state.get("model", ""), version=state.get("version", ""),
        co_host=tuple(state.get("co_host", ())), start_from=state.get("start_from", settings.start_from),
    )
    trusted = state.get("trusted_files")
    still = state.get("trusted") is True and isinstance(trusted, dict) and _file_digests(deployed) == trusted
    return replaced(deployed, trust_model_file=settings.trust_model_file or still)


def _note_idle_replicas(settings: DeploySettings, console: Console) -> None:
    """More replicas than requests partitions: the group gives the extra ones nothing to read."""
    requests = settings.topics().requests
    try:
        partitions = partition_counts(settings.librdkafka(), [requests], settings.connect_timeout_s)[requests]
    except RendezvousError:
        return  # a missing topic is said where the replicas start
    if settings.replicas > partitions:
        print_note(console, f"{settings.replicas} replicas for {partitions} partitions of {requests}: "
                   f"{settings.replicas - partitions} of them stand by with nothing to read (they take over when "
                   "another stops)")


def _none_exited(started: dict[int, subprocess.Popen[bytes]], folder: Path) -> None:
    """A replica that exited while the group formed says why now (its log's last line), not
    after --wait-s as a group that never formed."""
    for index, proc in started.items():
        code = proc.poll()
        if code is not None:
            log_file = folder / f"replica-{index}.log"
            lines = log_file.read_text(errors="replace").strip().splitlines() if log_file.exists() else []
            raise ConfigError(f"replica {index} exited ({code}): {lines[-1] if lines else 'no output'} "
                              f"(log: {log_file})")


def _positions(settings: DeploySettings, group: str) -> list[int] | None:
    """`group`'s committed offset on each requests partition (negative: none); None if the broker
    did not say."""
    from confluent_kafka import KafkaException, TopicPartition

    from services.core.kafka import committed_offsets, partition_counts

    config, requests = settings.librdkafka(), settings.topics().requests
    try:
        partitions = [TopicPartition(requests, p) for p in range(partition_counts(config, [requests])[requests])]
        return [tp.offset for tp in committed_offsets(config, group, partitions, stable=False)]
    except KafkaException as exc:
        log.debug("committed offsets of %s not read: %s", group, exc)
        return None


def _committed_before(settings: DeploySettings, group: str) -> bool:
    """Whether `group` already has a committed position (a deployment of the same name before)."""
    positions = _positions(settings, group)
    return positions is not None and any(offset >= 0 for offset in positions)


def _wait_for_starts(
    settings: DeploySettings, group: str, until: float, console: Console, check: Callable[[], None]
) -> None:
    """Wait for the new group's start on every requests partition to be committed: from then on
    every request is scored (a group is Stable a moment before its members have read where
    `latest` is)."""
    until = max(until, time.monotonic() + 10)  # the group's wait may have used up --wait-s
    while time.monotonic() < until:
        positions = _positions(settings, group)
        if positions is not None and all(offset >= 0 for offset in positions):
            return
        check()  # a replica that died after joining says so, not as a start never committed
        time.sleep(0.2)  # polling the broker for a commit the replicas make, not a readiness guess
    console.print(f"[yellow]{group} has not committed where it starts on every partition: requests sent "
                  "meanwhile may not be scored[/yellow]")


def compose_block(name: str, settings: DeploySettings) -> str:
    return (
        f"  {name}:\n    <<: *rdv\n    command: {json.dumps(_model_serve_args(name, settings))}\n"
        + (f"    deploy:\n      replicas: {settings.replicas}\n" if settings.replicas > 1 else "")
    )


def _stop(pids: list[int], timeout_s: float = 20.0) -> None:
    """SIGTERM (they drain and commit), then SIGKILL whatever outlives `timeout_s`."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the replicas to drain and exit
    for pid in (p for p in pids if _alive(p)):
        _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, signum: signal.Signals) -> None:
    """A replica leads its own process group (spawned detached); one gone meanwhile is stopped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


@dataclass(frozen=True)
class UndeploySettings(KafkaSettings):
    """Stop a deployment's processes."""

    force: bool = setting(False, "undeploy: stop it even if the live schedule prefers one of its models, or "
                          "it is the last rendezvous instance serving.")
    schedule_name: str = setting(DEFAULT_NAME, "undeploy: the schedule checked for its models.")

    def validate(self) -> None:
        check_schedule_name(self.schedule_name, "--schedule-name")


def cmd_undeploy(name: str, console: Console, timeout_s: float = 20.0,
                 settings: UndeploySettings | None = None) -> int:
    check_model_name(name, "deployment name")
    if not _state_file(name).parent.is_dir():  # before the lock, which would leave its folder behind (a probe)
        raise ConfigError(f"{name} is not deployed on this machine: nothing to undeploy")
    with _one_at_a_time(name, console):
        return _undeploy(name, console, timeout_s, settings)


def _undeploy(name: str, console: Console, timeout_s: float, settings: UndeploySettings | None) -> int:
    pids = running_pids(name)
    if not pids:
        if _state_file(name).exists():  # deployed, but every replica has exited: only its record is left
            _state_file(name).unlink()
            console.print(f"undeployed {name}: none of its replicas was running any more (they had exited)")
            return 0
        raise ConfigError(f"{name} is not deployed on this machine: nothing to undeploy")
    if settings is not None and not settings.force:
        # The deployment's own topics and groups, whatever this command's --topic-prefix (older
        # records have none: this command's, then).
        settings = replaced(settings, topic_prefix=_state(name).get("topic_prefix", settings.topic_prefix))
        if name == RENDEZVOUS:
            _check_not_last_rendezvous(len(pids), settings, console)
        else:
            _check_not_preferred(name, settings, console)
    _stop(pids, timeout_s)
    _state_file(name).unlink(missing_ok=True)
    console.print(f"undeployed {name} (pids {pids})")
    return 0


def _check_not_last_rendezvous(replicas: int, settings: UndeploySettings, console: Console) -> None:
    """Refuse to stop the last instances of the rendezvous: no request would be answered until one
    runs again (each client waits out its deadline). Instances elsewhere are members of its group."""
    group = f"{settings.topic_prefix}{RENDEZVOUS}"
    members = _read_from_broker(settings, console, lambda config: group_member_count(config, group))
    if members is not None and 0 < members <= replicas:  # none: they never joined, and stopping them changes nothing
        raise ConfigError(f"these {replicas} instance(s) are every member of consumer group {group}: once stopped no "
                          f"request on {settings.topics().requests} is answered until a rendezvous runs again; "
                          "deploy another first, or undeploy rendezvous --force")


def _read_from_broker(settings: UndeploySettings, console: Console, read: Callable[[dict[str, Any]], T]) -> T | None:
    """What `read` finds on the broker, or None with a note: stopping needs no broker, and the
    check is a courtesy when there is one."""
    from confluent_kafka import KafkaException

    from services.cli.common import with_bootstrap

    try:
        # A courtesy check that registry trouble must not skip: a schedule framed by the registry
        # is still looked up when met, as in any command before the start-up check.
        return read(with_bootstrap(settings, check_registry=False).librdkafka())
    except UnusableControlTopic:
        # The check's own refusal: taken for the broker not answering, it was a note and the model
        # was stopped all the same (a review, twice). Other refusals stay notes: a client this
        # host cannot make (a CA file that is another machine's) must not keep a model running.
        raise
    except (RendezvousError, KafkaException) as exc:  # no broker given or running, or it does not answer
        print_note(console, f"the broker could not be asked ({exc}): not checked")
        return None


def _check_not_preferred(name: str, settings: UndeploySettings, console: Console) -> None:
    """Refuse to stop the model the live schedule answers with (promote, rollback and schedule set
    refuse to prefer a model that is not scoring; this was the one way to get there unasked):
    every answer would then wait for the fallback, or time out."""
    from services.cli.common import warn_of_history_loss
    from services.control.topic import ScheduleBook, check_held, load_books

    state = _state(name)
    # Stripped as `--co-host` reads them: 'challenger =demo:challenger' hosts `challenger`.
    models = [name, *(entry.split("=", 1)[0].strip() for entry in state.get("co_host", []))]
    control = settings.topics().control

    def read(config: dict[str, Any]) -> tuple[ScheduleBook, set[str]]:
        found = load_books(config, control, settings.schedule_name)
        # A topic that lost its old versions may hold none of those the running rendezvous answer by.
        warn_of_history_loss(config, control, console)
        return found

    found = _read_from_broker(settings, console, read)
    if found is None:
        return
    book, names = found
    # Refused here, not in `read`: a refusal there was taken for the broker not answering, said as
    # a note, and the model stopped all the same (a review).
    check_held(control, book, names, f", or undeploy {name} --force")
    # The version in force answers until the next takes effect (a change published with a
    # longer --effective-in is pending): the latest alone let the champion of now be stopped.
    now = now_ms()
    fallback = None  # the first version naming one as a fallback: said if none is refused
    for schedule, start in book.in_force_and_after(now):
        held = [m for m in models if m in schedule.answering()]
        if held:
            if start > now:
                when = f" from {format_ms(start)}"
            else:
                when = "" if schedule is book.latest else " until the next version takes effect"
            raise ConfigError(f"{', '.join(held)} is what schedule {schedule.name} v{schedule.version} answers with"
                              f"{when}: once stopped every such answer waits for a fallback or times out; promote "
                              f"another model first, or undeploy {name} --force")
        if fallback is None and (named := [m for m in models if m in schedule.model_set]):
            fallback = (schedule, named)
    if fallback is not None:
        # Said, not refused: an answer whose preferred model fails then waits for it (to the
        # deadline, unless the schedule gives it a wait) before the fallbacks after it (a review
        # found it stopped without a word).
        schedule, named = fallback
        print_note(console, f"{', '.join(named)} is a fallback of schedule {schedule.name} v{schedule.version}: "
                   "while it is named, an answer whose preferred model fails waits for it (to the deadline "
                   "unless the schedule gives it a wait); `rendezvous schedule set` without it")

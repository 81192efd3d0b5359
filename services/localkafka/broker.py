"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) run from cached jars.

    broker = LocalBroker("default")
    bootstrap = broker.start()        # "127.0.0.1:PORT", once a metadata request is answered
    broker.stop()

`<data>/state.json` records the running broker so another process (the CLI) can find, query and
stop it: see `start_background`, `status_background`, `stop_background`, `read_bootstrap`.

`start()` formats a fresh cluster (new id, free ports, empty `logs/`): the broker is for development
and tests. For fault tests a broker can go down and come back with its data, cluster id and ports
(clients keep their bootstrap address):

    broker.stop(keep_data=True)       # or broker.kill(): SIGKILL, a crash; the data stays too
    broker.start(fresh=False)         # same server.properties, no format; log recovery after a kill

`stop()` without `keep_data` deletes `logs/` (the topics); `broker.log` stays for reading.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.errors import BrokerError, BrokerUnavailable
from services.core.files import write_whole
from services.core.runtime import die_with_parent
from services.core.terminal import shortened
from services.localkafka import cds, config, warmup
from services.localkafka.jars import Progress, java_executable, locked, provision
from services.localkafka.jvm import DEFAULT_JVM_OPTIONS, JVM_OPTS_ENV, TOOL_JVM_OPTIONS, with_overrides
from services.localkafka.process import error_lines, is_stack_frame, pid_alive, signal_group, tail, wait_until
from services.localkafka.tls import TLS_LISTENER, tls_broker_options
from services.localkafka.tls import generate as generate_tls

log = logging.getLogger(__name__)

MAIN_CLASS = "kafka.Kafka"
# How long `start(fresh=False)` waits for the kept ports to be free (a client may hold one for a moment).
RESUME_PORT_WAIT_S = 10.0
LOG_LINE_CHARS = 200  # a line of the broker's output quoted in an error (Raft's run to 400 and more)
_ADMIN_LOG = logging.getLogger(f"{__name__}.admin")  # librdkafka's connection-refused noise goes here


@dataclass
class LocalBroker:
    """One local broker. `extra_listeners` maps listener name -> security protocol (each gets a free port)."""

    name: str = "default"
    data_dir: Path | None = None
    extra_properties: dict[str, str] = field(default_factory=dict)
    extra_listeners: dict[str, str] = field(default_factory=dict)
    format_args: list[str] = field(default_factory=list, repr=False)  # may hold a SCRAM password
    jvm_options: tuple[str, ...] = DEFAULT_JVM_OPTIONS
    cds_dir: Path | None = None  # where class-data-sharing archives live (default: the cache's broker-cds/)
    progress: Progress | None = field(default=None, repr=False)
    # A test's broker stops with the process that started it, even one killed by SIGKILL or by a
    # SIGTERM that runs no clean-up: each left a JVM (half a GiB) running for good (a test run killed by
    # `timeout` left one).
    dies_with_parent: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _state: dict[str, Any] | None = field(default=None, init=False, repr=False)
    # A resume's server.properties as kept, and as it is launched with (today's tuning, the environment's).
    _kept_properties: str | None = field(default=None, init=False, repr=False)
    _resumed_properties: str | None = field(default=None, init=False, repr=False)
    # The kept ports, bound (not listening) while the broker is down: see `_hold_ports`.
    _held_ports: list[socket.socket] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve() if self.data_dir else config.broker_dir(self.name)

    # ----- paths and properties -------------------------------------------------------------
    @property
    def root(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def properties_file(self) -> Path:
        return self.root / "server.properties"

    def _write_properties(self, text: str) -> None:
        """server.properties, readable by its owner only: it holds the TLS key (inline PEM) and the
        SASL users' passwords of a secured broker. Whole or not at all (written aside, then renamed):
        emptied first, a write that failed (a full disk) left no properties, and the next start took
        the kept topics for none and deleted them (a review)."""
        write_whole(self.properties_file, text, mode=0o600)

    @property
    def log_file(self) -> Path:
        return self.root / "broker.log"

    @property
    def stdout_file(self) -> Path:
        return self.root / "stdout.log"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def pid(self) -> int | None:
        return int(self._state["pid"]) if self._state else None

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:PORT` of the PLAINTEXT listener; `BrokerUnavailable` if not started."""
        return self.listener(config.BROKER_LISTENER)

    def listener(self, name: str) -> str:
        """`127.0.0.1:PORT` of a listener (PLAINTEXT or one of `extra_listeners`, e.g. "SASL")."""
        if not self._state:
            raise BrokerUnavailable(f"local broker {self.name!r} is not running")
        listeners: dict[str, str] = self._state["listeners"]
        if name.upper() not in listeners:
            raise BrokerError(f"local broker {self.name!r} has no listener {name!r} (has {', '.join(listeners)})")
        return str(listeners[name.upper()])

    # ----- lifecycle ------------------------------------------------------------------------
    def is_running(self) -> bool:
        """True if this broker's process is alive (re-reading the state file if needed)."""
        if self._state is None:
            self._state = self._read_state()
        if self._state and self._alive(int(self._state["pid"])):
            return True
        self._state = None
        return False

    def start(self, wait_timeout: float = 90.0, *, fresh: bool = True) -> str:
        """Launch the broker and wait until it answers; returns the bootstrap.

        `fresh=True` formats a new cluster: new cluster id, new free ports, empty `logs/`.
        `fresh=False` resumes the data left by `stop(keep_data=True)` or `kill()`: the same
        server.properties (ports, listeners, settings), cluster id and topics; nothing is formatted.
        A JVM that crashed mapping its class-data archive is started once more without it (cds.py).
        """
        try:
            return self._start_once(wait_timeout, fresh)
        except cds.ArchiveCrashed as crashed:
            (self.progress or (lambda _msg: None))(f"{crashed}; starting the broker without it")
            log.warning("%s; starting the broker without it", crashed)
            return self._start_once(wait_timeout, fresh)

    def _start_once(self, wait_timeout: float, fresh: bool) -> str:
        if self.is_running():
            raise BrokerError(f"local broker {self.name!r} already runs (pid {self.pid}, {self.bootstrap})")
        say = self.progress or (lambda _msg: None)
        # The environment's switches are read now, so a bad one is said before anything starts.
        warmup.wanted(os.environ.get(warmup.WARMUP_ENV))
        cds.wanted(os.environ.get(JVM_OPTS_ENV))
        config.request_log_path(os.environ.get(config.REQUEST_LOG_ENV))
        # An earlier resume's settings are not this start's (a fresh start wrote them over its own).
        self._kept_properties = self._resumed_properties = None
        kept = None if fresh else self._resume_config()  # before anything else: no data, no start
        java = java_executable()
        libs = provision(self.progress)
        started = time.monotonic()
        log4j = self.root / "log4j2.properties"
        classpath = f"{libs}/*"
        logging_opt = f"-Dlog4j2.configurationFile={log4j}"
        if kept is None:
            self._prepare_dir()
            listeners, cluster_id = self._configure_fresh()
            log4j.write_text(self._log4j2())
            say(f"Formatting storage of local broker {self.name!r} in {self.root} ...")
            self._format(java, classpath, logging_opt, cluster_id)
        else:
            listeners, cluster_id = kept
            log4j.write_text(self._log4j2())
            say(f"Resuming local broker {self.name!r} (cluster {cluster_id}) from {self.root} ...")
        jvm_options = with_overrides(self.jvm_options, os.environ.get(JVM_OPTS_ENV))
        archive, cds_options, cds_pending = self._cds(java, libs)
        if self._resumed_properties is not None:
            self._write_properties(self._resumed_properties)
        jvm_options = (*jvm_options, *cds_options)
        cmd = [java, *jvm_options, logging_opt, "-cp", classpath, MAIN_CLASS, str(self.properties_file)]
        self._release_ports()
        log.debug("starting %s", " ".join(cmd))
        with self.stdout_file.open("wb") as out:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True, preexec_fn=die_with_parent if self.dies_with_parent else None,
            )  # fmt: skip
        try:  # from the launch on, whatever fails (a Ctrl-C too): a broker half started is not left behind
            self._started(listeners, cluster_id, fresh, jvm_options, archive, cds_pending, say, wait_timeout)
        except BaseException as exc:
            if self._state is None:  # not yet recorded: killed by its own handle
                self._state = {"pid": self._proc.pid}
            self._kill_now()
            self._restore_kept_properties()
            if isinstance(exc, BrokerError) and cds_pending is None and archive is not None:
                cds.set_aside_if_crashed(archive, self.stdout_file)  # ArchiveCrashed: start again without it
            raise
        elapsed = time.monotonic() - started
        how = "resumed" if not fresh else "ready"
        log.info("local broker %r %s at %s in %.1f s", self.name, how, self.bootstrap, elapsed)
        say(f"Kafka broker {how} at {self.bootstrap} in {elapsed:.1f} s (log: {self.log_file})")
        return self.bootstrap

    def _started(
        self, listeners: dict[str, str], cluster_id: str, fresh: bool, jvm_options: tuple[str, ...],
        archive: Path | None, cds_pending: Path | None, say: Progress, wait_timeout: float,
    ) -> None:
        """Record the launched JVM, wait until it serves, warm it up."""
        assert self._proc is not None
        controller = listeners.pop(config.CONTROLLER_LISTENER, "")
        self._state = {
            "name": self.name, "pid": self._proc.pid, "bootstrap": listeners[config.BROKER_LISTENER],
            "listeners": listeners, "controller": controller, "cluster_id": cluster_id,
            "data_dir": str(self.root), "log_file": str(self.log_file), "started_at": time.time(),
            "ready": False, "resumed": not fresh, "kafka_version": config.KAFKA_VERSION,
            "jvm_options": list(jvm_options),
            "cds_archive": str(archive or ""), "cds_pending": str(cds_pending or ""),
        }  # fmt: skip
        self._write_state()
        say(f"Starting Apache Kafka {config.KAFKA_VERSION} (pid {self._proc.pid}) ...")
        self._wait_ready(wait_timeout)
        self._warm_up(say)
        self._state["ready"] = True
        self._write_state()

    def stop(self, timeout: float = 20.0, *, keep_data: bool = False) -> bool:
        """SIGTERM the broker's process group, SIGKILL after `timeout`; False if it was not running.

        Without `keep_data` the topics (`logs/`) are deleted; with it `start(fresh=False)` brings
        the same cluster back on the same ports.
        """
        say = self.progress or (lambda _msg: None)
        if not self.is_running():
            self.state_file.unlink(missing_ok=True)
            if not keep_data:
                self._discard_data()
            log.info("local broker %r is not running", self.name)
            say(f"Local broker {self.name!r} is not running")
            return False
        pid = int(self._state["pid"]) if self._state else 0
        state = dict(self._state or {})
        say(f"Stopping local broker {self.name!r} (pid {pid}) ...")
        signal_group(pid, signal.SIGTERM)
        if wait_until(lambda: not self._alive(pid), timeout, interval=0.1):
            self._adopt_cds_archive(state)
        else:
            log.warning("local broker pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout)
            self._kill_now()
        self._state = None
        self._proc = None
        self.state_file.unlink(missing_ok=True)
        if keep_data:
            self._hold_ports()
        else:
            self._discard_data()
        say(f"Local broker {self.name!r} stopped" + (" (data kept)" if keep_data else ""))
        return True

    def kill(self) -> bool:
        """SIGKILL the broker (a crash: no clean shutdown); its data stays for `start(fresh=False)`.

        False if it was not running.
        """
        if not self.is_running():
            return False
        pid = self.pid
        log.info("killing local broker %r (pid %s)", self.name, pid)
        self._kill_now()
        self._proc = None
        self._hold_ports()
        return True

    def _hold_ports(self) -> None:
        """Bind the kept listeners' ports, without listening, until the broker is started again:
        its clients keep the old addresses, so it must get them back, and while it was down for a
        test's outage (15 s) another test's free_ports() could take one ('port(s) ... are taken by
        another process', a flake). A client connecting meanwhile is refused, as by no socket at all.
        SO_REUSEADDR: the broker's own connections linger in TIME_WAIT on them; a free_ports() bind
        (without it) is refused all the same, and the resume's port_free() (with it) is not."""
        self._release_ports()
        try:
            listeners = config.listener_addresses(config.parse_properties(self.properties_file.read_text()))
        except OSError:
            return
        for address in listeners.values():
            host, _, port = address.rpartition(":")
            holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                holder.bind((host or config.HOST, int(port)))
            except (OSError, ValueError):
                holder.close()  # held by another already: the resume says so
                continue
            self._held_ports.append(holder)

    def _release_ports(self) -> None:
        while self._held_ports:
            self._held_ports.pop().close()

    def status(self) -> dict[str, Any]:
        """State of the broker: always `name`, `running`, `data_dir`, `log_file`; more when running."""
        running = self.is_running()
        info: dict[str, Any] = {
            "name": self.name, "running": running, "data_dir": str(self.root), "log_file": str(self.log_file),
        }  # fmt: skip
        if running and self._state:
            info |= self._state
            info["uptime_s"] = round(time.time() - float(self._state["started_at"]), 1)
        info["data_kept"] = self.has_kept_data()
        ca = self.root / "tls" / "ca.pem"
        if ca.exists() and TLS_LISTENER in self.kept_listeners():
            info["tls_ca"] = str(ca)  # clients: security.protocol=SSL, ssl.ca.location=<this>
        info["data_bytes"] = self.data_bytes()
        return info

    def has_kept_data(self) -> bool:
        """A formatted cluster is on disk (kept by `stop(keep_data=True)` or a crash)."""
        try:
            props = config.parse_properties(self.properties_file.read_text())
        except OSError:
            return False
        data = config.log_dir(props)
        return data is not None and config.read_cluster_id(data) is not None

    @property
    def launched_here(self) -> bool:
        """Whether this process started the broker's JVM (not one found running)."""
        return self._proc is not None

    def holds_data(self) -> bool:
        """A formatted log directory is on disk, whatever server.properties says."""
        return (self.root / "logs" / "meta.properties").exists()

    def kept_listeners(self) -> set[str]:
        """Listener names of the kept configuration (empty if none)."""
        try:
            return set(config.listener_addresses(config.parse_properties(self.properties_file.read_text())))
        except OSError:
            return set()

    def data_bytes(self) -> int:
        """Bytes of disk the topic data takes. A running broker deletes files and whole directories
        meanwhile (a deleted topic, old segments): those are skipped, not an error."""
        return _bytes_under(self.root / "logs")

    def reset(self, timeout: float = 20.0) -> int:
        """Stop the broker if it runs and delete its data; returns the bytes deleted."""
        size = self.data_bytes()
        self.stop(timeout=timeout, keep_data=False)
        self.properties_file.unlink(missing_ok=True)
        return size

    # ----- internals ------------------------------------------------------------------------
    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return pid_alive(pid, must_contain=(MAIN_CLASS, str(self.properties_file)))

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and "pid" in state else None

    def _restore_kept_properties(self) -> None:
        """A resume that failed leaves server.properties as it was kept: a bad $RDV_BROKER_PROPERTIES
        value (or a mistyped log.dirs, which made the next start format a new cluster over the
        topics) is not saved for every later start."""
        if self._kept_properties is not None:
            self._write_properties(self._kept_properties)
            if self._resumed_properties != self._kept_properties and os.environ.get(config.PROPERTIES_ENV):
                say = self.progress or (lambda _msg: None)
                say(f"{self.properties_file} is kept as it was: the start with ${config.PROPERTIES_ENV} failed")

    def _write_state(self) -> None:
        write_whole(self.state_file, json.dumps(self._state, indent=1))

    def _prepare_dir(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._discard_data()
        for old in [self.state_file, self.stdout_file, *self.root.glob("broker.log*")]:
            old.unlink(missing_ok=True)

    def _discard_data(self) -> None:
        self._release_ports()  # the ports are not wanted back
        shutil.rmtree(self.root / "logs", ignore_errors=True)

    def _configure_fresh(self) -> tuple[dict[str, str], str]:
        """Write server.properties on new free ports; returns ({listener: address}, new cluster id)."""
        ports = config.free_ports(2 + len(self.extra_listeners))
        pairs = zip(self.extra_listeners.items(), ports[2:], strict=True)
        extra = {lname.upper(): (port, proto) for (lname, proto), port in pairs}
        props = config.server_properties(
            self.root, ports[0], ports[1], extra_listeners=extra, extra_properties=self._extra_properties()
        )
        self._write_properties(config.render_properties(props))
        return config.listener_addresses(props), config.new_cluster_id()

    def _log4j2(self) -> str:
        return config.log4j2_properties(self.log_file, config.request_log_path(os.environ.get(config.REQUEST_LOG_ENV)))

    def _extra_properties(self) -> dict[str, str]:
        # $RDV_BROKER_PROPERTIES (experiments) has the last word, over the code's own extras.
        from_env = config.properties_from_text(os.environ.get(config.PROPERTIES_ENV))
        return {**self.extra_properties, **from_env}

    def _resume_config(self) -> tuple[dict[str, str], str]:
        """The kept server.properties and cluster id, once every port of it can be listened on again."""
        hint = "start it with fresh=True, or stop it with keep_data=True to resume it later"
        try:
            props = config.parse_properties(self.properties_file.read_text())
        except OSError:
            raise BrokerError(f"local broker {self.name!r} has no kept data in {self.root}: {hint}") from None
        data = config.log_dir(props)
        cluster_id = config.read_cluster_id(data) if data else None
        if cluster_id is None:
            raise BrokerError(f"local broker {self.name!r} has no formatted data in {data}: {hint}")
        listeners = config.listener_addresses(props)
        ports = [int(address.rpartition(":")[2]) for address in listeners.values()]
        if not wait_until(lambda: all(config.port_free(p) for p in ports), RESUME_PORT_WAIT_S, interval=0.1):
            taken = [p for p in ports if not config.port_free(p)]
            raise BrokerError(
                f"cannot resume local broker {self.name!r}: port(s) {', '.join(map(str, taken))} "
                f"are taken by another process (clients keep the old addresses, so the ports must not change)"
            )
        resumed = config.resumed_properties(props, self._extra_properties())
        self._kept_properties = self._resumed_properties = None  # nothing of an earlier start
        if resumed != props:  # a broker kept by older code takes today's tuning too (written at launch)
            self._kept_properties = self.properties_file.read_text()
            self._resumed_properties = config.render_properties(resumed)
        self.state_file.unlink(missing_ok=True)
        if self.log_file.exists():  # keep the previous run's log, but out of this run's error report
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".previous"))
        return listeners, cluster_id

    def _format(self, java: str, classpath: str, logging_opt: str, cluster_id: str) -> None:
        cmd = [
            java, *TOOL_JVM_OPTIONS, logging_opt, "-cp", classpath, "kafka.tools.StorageTool",
            "format", "-t", cluster_id, "-c", str(self.properties_file), *self.format_args,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            out = "\n".join([ln for ln in lines if not is_stack_frame(ln)][-20:])
            raise BrokerError(f"kafka-storage format failed (exit {done.returncode}):\n{out}")

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        host, _, port = self.bootstrap.rpartition(":")
        admin: AdminClient | None = None
        while True:
            pid = self.pid or 0
            if not self._alive(pid):
                raise BrokerError(
                    f"local Kafka broker exited during startup; from its log:\n{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"local Kafka broker did not answer within {timeout:g} s; "
                    f"from its log:\n{self._log_tail()}"
                )
            if _port_open(host, int(port)):
                if admin is None:
                    admin_conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": _ADMIN_LOG}
                    admin = AdminClient(admin_conf)
                try:
                    if admin.list_topics(timeout=1).brokers:
                        # Have the broker create __consumer_offsets now, not at the first group join
                        # (which then waits ~3 s in librdkafka's retry backoff). Not awaited.
                        admin.describe_consumer_groups(["_rdv_warmup"], request_timeout=5)
                        return
                except KafkaException as err:
                    log.debug("broker not ready yet: %s", err)
            time.sleep(0.05)

    def _warm_up(self, say: Progress) -> None:
        """Compile the broker's serving paths before anyone depends on them (warmup.py says why)."""
        assert self._state is not None
        if not warmup.wanted(os.environ.get(warmup.WARMUP_ENV)):
            self._state["warm_up"] = "off"
            return
        say(f"Warming up the broker's JIT with serving-like traffic ({warmup.WARMUP_ENV}=off skips it) ...")
        self._state["warm_up"] = warmup.warm_up(self.bootstrap).as_dict()

    def _cds(self, java: str, libs: Path) -> tuple[Path | None, tuple[str, ...], Path | None]:
        """The class-data-sharing archive for this JVM (cds.py): its path, the JVM options, and
        the file this broker writes at a clean exit (None when it maps an existing archive)."""
        if not cds.wanted(os.environ.get(JVM_OPTS_ENV)):
            return None, (), None
        directory = self.cds_dir or config.cache_dir() / "broker-cds"
        archive = cds.archive_path(directory, java, config.KAFKA_VERSION, libs)
        options, pending = cds.options(archive)
        return archive, options, pending

    @staticmethod
    def _adopt_cds_archive(state: dict[str, Any]) -> None:
        pending, archive = state.get("cds_pending"), state.get("cds_archive")
        if pending and archive:
            cds.adopt(Path(pending), Path(archive))

    def _kill_now(self) -> None:
        pid = self.pid
        if pid is None:
            return
        pending = (self._state or {}).get("cds_pending")
        if pending:
            cds.discard(Path(pending))
        signal_group(pid, signal.SIGKILL)
        wait_until(lambda: not self._alive(pid), 10.0)
        self.state_file.unlink(missing_ok=True)
        self._state = None

    def _log_tail(self) -> str:
        """The JVM's own output first (a JVM that could not start says why there, last: the
        error line, cut at 1,000 characters, lost it behind three Raft lines of the log; a
        review), then the log's errors and last lines, each line cut to LOG_LINE_CHARS."""
        errors = error_lines(self.log_file)
        parts = [tail(self.stdout_file, 10), f"errors:\n{errors}" if errors else "", tail(self.log_file, 6)]
        lines = "\n".join(p for p in parts if p).splitlines()
        return "\n".join(shortened(line, LOG_LINE_CHARS) for line in lines) or "(no log output)"


def _bytes_under(directory: Path) -> int:
    """Disk space the files under `directory` take, as `du` counts it: blocks, not apparent sizes.
    Kafka preallocates each active segment's offset and time indexes (10 MB each) as sparse files,
    so their apparent size overstated a kept demo broker's data tenfold (4.6 GB for 409 MB)."""
    total = 0
    for parent, _dirs, files in os.walk(directory):  # a directory gone meanwhile is skipped by os.walk
        for name in files:
            try:
                total += os.stat(os.path.join(parent, name)).st_blocks * 512  # st_blocks: 512-byte units
            except FileNotFoundError:
                continue  # deleted between listing and stat
    return total


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# ----- module-level helpers for the CLI -----------------------------------------------------------
@contextmanager
def _one_at_a_time(broker: LocalBroker) -> Iterator[None]:
    """One start, stop or reset of a named broker at a time, across processes: two demos started at
    once both saw no broker running and both formatted and launched one over the same directory.
    The lock file lives beside the data directory, which a reset deletes."""
    def waiting() -> None:
        if broker.progress:
            broker.progress(f"Another command is starting, stopping or resetting local broker {broker.name!r}: "
                            "waiting for it")

    with locked(broker.root.parent / f".{broker.root.name}.lock", waiting):
        yield


def start_background(
    name: str = "default", *, wait_timeout: float = 90.0, progress: Progress | None = None,
    fresh: bool | None = None, tls: bool = False,
) -> LocalBroker:
    """Start the named broker and leave it running; returns the already running one if there is one.

    Like a database, it resumes the data a previous run kept (`fresh=None`, the default) and
    starts empty only when there is none or when `fresh=True` (see `LocalBroker.start`).
    `tls=True` adds a TLS listener ("SSL") with a CA and certificate generated in `<data>/tls/`.
    """
    broker = LocalBroker(name, progress=progress)
    with _one_at_a_time(broker):
        return _start_background(broker, wait_timeout, fresh, tls)


def _start_background(broker: LocalBroker, wait_timeout: float, fresh: bool | None, tls: bool) -> LocalBroker:
    name, progress = broker.name, broker.progress
    if broker.is_running() and (fresh or tls):
        asked = " and ".join(flag for flag, on in (("--fresh", fresh), ("--tls", tls)) if on)
        raise BrokerError(f"local broker {name!r} already runs (pid {broker.pid}, {broker.bootstrap}): {asked} "
                          "cannot apply to it; `rendezvous broker stop` first")
    if broker.is_running():
        if progress:
            progress(f"Local broker {name!r} already runs at {broker.bootstrap} (pid {broker.pid})")
        return broker
    resume = not fresh and broker.has_kept_data()
    if not fresh and not resume and broker.holds_data():
        # Topics on disk, but no readable configuration that names them: starting anew deleted them.
        raise BrokerError(f"local broker {name!r} holds data in {broker.root / 'logs'} but its server.properties "
                          "is missing or unreadable: `rendezvous broker start --fresh` (or `broker reset`) starts it "
                          "empty, deleting its topics")
    if tls and resume and TLS_LISTENER not in broker.kept_listeners():
        raise BrokerError(f"local broker {name!r} kept data from a start without TLS: "
                          "`rendezvous broker start --tls --fresh` starts anew with TLS (its topics are deleted)")
    if tls and not resume:
        files = generate_tls(broker.root / "tls")
        broker = LocalBroker(name, progress=progress, **tls_broker_options(files))  # type: ignore[arg-type]
    if resume and progress:
        progress(f"Resuming the kept data of local broker {name!r} ({broker.data_bytes():,} bytes in {broker.root}); "
                 "`rendezvous broker reset` deletes it")
    broker.start(wait_timeout=wait_timeout, fresh=not resume)
    return broker


def stop_background(
    name: str = "default", *, timeout: float = 20.0, progress: Progress | None = None, keep_data: bool = True
) -> bool:
    """Stop the named broker; False if it was not running. Its topics are kept unless `keep_data=False`."""
    broker = LocalBroker(name, progress=progress)
    with _one_at_a_time(broker):
        return broker.stop(timeout=timeout, keep_data=keep_data)


def reset_background(name: str = "default", *, progress: Progress | None = None) -> int:
    """Stop the named broker if it runs and delete every topic it holds; returns the bytes deleted."""
    broker = LocalBroker(name, progress=progress)
    with _one_at_a_time(broker):
        return broker.reset()


def status_background(name: str = "default") -> dict[str, Any]:
    """`LocalBroker.status()` of the named broker, running or not (where its data lives, how big)."""
    return LocalBroker(name).status()


def read_bootstrap(name: str = "default") -> str | None:
    """Bootstrap address of the named local broker if its process is alive, else None."""
    broker = LocalBroker(name)
    return broker.bootstrap if broker.is_running() else None


@contextmanager
def ephemeral_broker(
    tmp_dir: Path | str, *, wait_timeout: float = 90.0, **options: Any
) -> Iterator[LocalBroker]:
    """A broker with its data under `tmp_dir`, stopped on exit whatever happens (for tests).

    `options` are `LocalBroker` fields, e.g. `**sasl_broker_options("alice", "alice-secret")`.
    The broker may be stopped/killed and resumed inside the block; on exit it is stopped either way.
    """
    broker = LocalBroker(name="ephemeral", data_dir=Path(tmp_dir) / "kafka", **{"dies_with_parent": True, **options})
    try:
        broker.start(wait_timeout=wait_timeout)
        yield broker
    finally:
        broker.stop()

"""The local broker's and registry's files and start-up (services/localkafka, services/localregistry),
with stand-ins for Maven and the JVM: what a cut-short or repeated start leaves behind."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from services.core.errors import ConfigError
from services.localkafka import broker as broker_module
from services.localkafka import cds, config, jars, tls, warmup
from services.localkafka.process import pid_alive
from services.localregistry import registry


@pytest.mark.parametrize("value", ["C:\\new", "a\nb", "x\\\\n", "ends\\", "plain"])
def test_saved_broker_settings_read_back_as_written(value: str) -> None:
    """Two replaces in a row read a backslash before an n back as a newline (C:\\new)."""
    assert config.parse_properties(config.render_properties({"k": value})) == {"k": value}


def test_the_tls_key_is_its_owners_alone_even_written_over_a_kept_file(tmp_path: Path) -> None:
    kept = tmp_path / "broker-key.pem"
    kept.write_text("old")
    kept.chmod(0o644)
    files = tls.generate(tmp_path)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in files.key.read_bytes()


def test_a_cds_archive_is_named_for_the_jars_too(tmp_path: Path) -> None:
    """The JVM refuses an archive whose jars changed; named without them, the refused one was
    passed to every later start and none was written again."""
    java, libs = tmp_path / "java", tmp_path / "libs"
    java.write_text("#!/bin/sh\n")
    libs.mkdir()
    (libs / "kafka_2.13-4.1.0.jar").write_bytes(b"one")
    first = cds.archive_path(tmp_path / "cds", str(java), "4.1.0", libs)
    assert cds.archive_path(tmp_path / "cds", str(java), "4.1.0", libs) == first
    (libs / "kafka_2.13-4.1.0.jar").write_bytes(b"downloaded again")
    assert cds.archive_path(tmp_path / "cds", str(java), "4.1.0", libs) != first


class _Unanswered(Future[Any]):
    def result(self, timeout: float | None = None) -> Any:
        raise TimeoutError


class _SlowAdmin:
    def __init__(self, _conf: Any) -> None:
        pass

    def create_topics(self, topics: list[Any], **_kw: Any) -> dict[str, Future[Any]]:
        return {t.topic: _Unanswered() for t in topics}

    def delete_topics(self, topics: list[str], **_kw: Any) -> dict[str, Future[Any]]:
        return {t: _Unanswered() for t in topics}

    def delete_consumer_groups(self, groups: list[str], **_kw: Any) -> dict[str, Future[Any]]:
        return {g: _Unanswered() for g in groups}


def test_a_warm_up_whose_admin_calls_go_unanswered_ends_early_not_with_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only KafkaException was caught: the futures' TimeoutError escaped, and the start killed a
    broker that was ready, saying only 'TimeoutError()'."""
    monkeypatch.setattr(warmup, "AdminClient", _SlowAdmin)
    done = warmup.warm_up("127.0.0.1:9")
    assert done.error == "an admin request had no answer within 15 s"


def _stand_in_broker(monkeypatch: pytest.MonkeyPatch, launched: list[subprocess.Popen[bytes]],
                     settings: list[dict[str, str]]) -> None:
    """No Maven, no JVM: a `sleep` launched as the broker would be, recording its server.properties."""
    monkeypatch.setenv("RDV_BROKER_WARMUP", "off")
    monkeypatch.setenv("RDV_BROKER_CDS", "off")
    monkeypatch.delenv(config.PROPERTIES_ENV, raising=False)
    real_popen = subprocess.Popen

    def popen(cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        settings.append(config.parse_properties(Path(cmd[-1]).read_text()))
        launched.append(real_popen(["sleep", "300"], start_new_session=True, stdout=kw.get("stdout")))
        return launched[-1]

    def format_storage(self: broker_module.LocalBroker, _java: str, _cp: str, _opt: str, cluster_id: str) -> None:
        data = config.log_dir(config.parse_properties(self.properties_file.read_text()))
        data.mkdir(parents=True, exist_ok=True)
        (data / "meta.properties").write_text(f"cluster.id={cluster_id}\nnode.id=1\n")

    monkeypatch.setattr(broker_module, "java_executable", lambda: "/usr/bin/java")
    monkeypatch.setattr(broker_module, "provision", lambda _progress=None: Path("/nonexistent/libs"))
    monkeypatch.setattr(broker_module.LocalBroker, "_format", format_storage)
    monkeypatch.setattr(broker_module.LocalBroker, "_wait_ready", lambda _self, _timeout: None)
    monkeypatch.setattr(broker_module.subprocess, "Popen", popen)


def test_a_start_interrupted_right_after_the_launch_leaves_no_broker_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    launched: list[subprocess.Popen[bytes]] = []
    _stand_in_broker(monkeypatch, launched, [])

    def progress(line: str) -> None:
        if line.startswith("Starting Apache Kafka"):
            raise KeyboardInterrupt  # a Ctrl-C between the launch and the wait

    broker = broker_module.LocalBroker("t", data_dir=tmp_path / "kafka", progress=progress)
    try:
        with pytest.raises(KeyboardInterrupt):
            broker.start()
        assert launched[0].wait(10) == -9 and not broker.state_file.exists()
    finally:
        for proc in launched:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()


def test_a_fresh_start_after_a_resume_launches_with_its_own_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The resume's server.properties, kept on the object, were written over the fresh start's:
    the JVM listened on the old ports while the state file named the new ones."""
    launched: list[subprocess.Popen[bytes]] = []
    settings: list[dict[str, str]] = []
    _stand_in_broker(monkeypatch, launched, settings)
    broker = broker_module.LocalBroker("t", data_dir=tmp_path / "kafka")
    try:
        broker.start()
        broker.stop(keep_data=True)
        monkeypatch.setenv(config.PROPERTIES_ENV, "message.max.bytes=2000000")
        broker.start(fresh=False)
        broker.stop()
        monkeypatch.delenv(config.PROPERTIES_ENV)
        bootstrap = broker.start()
        assert f"//{bootstrap}" in settings[-1]["listeners"] and "message.max.bytes" not in settings[-1]
        broker.stop()
    finally:
        for proc in launched:
            if pid_alive(proc.pid):
                os.killpg(proc.pid, 9)
            proc.wait()


def _stand_in_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `mvn` whose first run unpacks the run jar and hangs (a slow mirror, then its timeout);
    later runs unpack it whole. Returns the file counting its runs."""
    runs = tmp_path / "runs"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    mvn = bindir / "mvn"
    mvn.write_text(f"""#!/bin/sh
pom=""; while [ $# -gt 0 ]; do [ "$1" = "-f" ] && pom="$2"; shift; done
d="$(dirname "$pom")/target/quarkus-app"; mkdir -p "$d"
echo run >> {runs}
printf 'PK' > "$d/quarkus-run.jar"
[ "$(wc -l < {runs})" -gt 1 ] && exit 0
exec sleep 30
""")
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(jars, "MAVEN_TIMEOUT_S", 1.0)
    return runs


def test_a_registry_fetch_cut_short_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run jar is there from the first seconds of Maven's unpack: a fetch cut short (timeout,
    Ctrl-C) was taken for a complete one by every later run."""
    runs = _stand_in_maven(tmp_path, monkeypatch)
    with pytest.raises(Exception, match="within 1 s"):
        registry.provision()
    jar = registry.provision()
    assert runs.read_text().count("run") == 2 and jar.is_file()
    assert registry.provision() == jar and runs.read_text().count("run") == 2  # complete now: not again


def test_a_registry_port_in_use_is_a_one_line_error_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another registry on the port answered the readiness check: 'started', while its own JVM died."""
    monkeypatch.setattr(registry, "provision", lambda _progress=None: pytest.fail("fetched before the port check"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port {port} is in use \(another schema registry\?\)"):
            registry.start(port)


def test_a_registry_cache_from_before_the_marker_is_kept_and_a_failed_fetch_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetched again for want of the marker, an offline machine lost a registry that ran."""
    import zipfile

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path / "cache"))
    fetches: list[str] = []
    monkeypatch.setattr(registry, "run_maven", lambda *_a: (fetches.append("maven"), pytest.fail("fetched"))[1])
    jar = registry._run_jar(registry.registry_home())
    for part in ("lib/main", "app"):
        (jar.parent / part).mkdir(parents=True)
    (jar.parent / "quarkus-app-dependencies.txt").write_text("io.apicurio:apicurio-registry-app::jar:3.3.3\n")
    for whole_jar in (jar, jar.parent / "lib" / "main" / "a.jar", jar.parent / "app" / "registry.jar"):
        with zipfile.ZipFile(whole_jar, "w") as whole:
            whole.writestr("META-INF/MANIFEST.MF", "Main-Class: x\n")
    assert registry.provision() == jar and fetches == []

    (registry.registry_home() / registry.MARKER).unlink()
    jar.write_bytes(b"PK")  # cut short now: fetched again, and the fetch fails (offline)

    def offline(*_args: Any) -> None:
        (jar.parent).mkdir(parents=True, exist_ok=True)
        jar.write_bytes(b"P")  # what Maven left before it failed
        raise ConfigError("Maven: could not resolve (offline)")

    monkeypatch.setattr(registry, "run_maven", offline)
    with pytest.raises(ConfigError, match="offline"):
        registry.provision()
    assert jar.read_bytes() == b"PK" and (jar.parent / "lib" / "main" / "a.jar").is_file()  # as it was


def test_a_registry_unpack_killed_outright_is_no_cache_from_before_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL mid-unpack (no clean-up) left the run jar and the libraries whole and the
    application jar empty: taken for a cache from before the marker, marked, and every later start
    failed, 'zip file is empty' (a review)."""
    import zipfile

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path / "cache"))
    jar = registry._run_jar(registry.registry_home())
    for part in ("lib/main", "app"):
        (jar.parent / part).mkdir(parents=True)
    for whole_jar in (jar, jar.parent / "lib" / "main" / "a.jar"):
        with zipfile.ZipFile(whole_jar, "w") as whole:
            whole.writestr("META-INF/MANIFEST.MF", "Main-Class: x\n")
    (jar.parent / "app" / "registry.jar").write_bytes(b"")  # being written when the unpack was killed
    assert not registry._whole_from_before_the_marker(registry.registry_home())
    (jar.parent / "app" / "registry.jar").unlink()
    (jar.parent / "quarkus-app-dependencies.txt").write_text("io.apicurio:apicurio-registry-app::jar:3.3.3\n")
    assert not registry._whole_from_before_the_marker(registry.registry_home())  # the application jar missing


def test_a_broker_that_could_not_start_is_said_with_the_jvms_own_words_first(tmp_path: Path) -> None:
    """The JVM's last line (its heap too small) came after three Raft lines of 400 characters, and
    the error, cut at 1,000 characters, lost it (a review)."""
    from services.localkafka.broker import LOG_LINE_CHARS, LocalBroker

    broker = LocalBroker("cut", data_dir=tmp_path)
    broker.root.mkdir(parents=True, exist_ok=True)
    raft = "".join(f"[2026-12-06 01:00:0{i},000] INFO [RaftManager] {'x' * 400}\n" for i in range(3))
    broker.log_file.write_text(raft)
    broker.stdout_file.write_text("Terminating due to java.lang.OutOfMemoryError: Java heap space\n")
    said = broker._log_tail()
    assert said.startswith("Terminating due to java.lang.OutOfMemoryError: Java heap space")
    assert max(map(len, said.splitlines())) <= LOG_LINE_CHARS

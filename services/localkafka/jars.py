"""Fetch the broker's jars from Maven Central once, into `<cache>/kafka-<version>/libs`."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.core.errors import BrokerError, ConfigError
from services.localkafka.config import KAFKA_VERSION, REPO_POM, kafka_home

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MARKER = ".provisioned.json"
MAVEN_TIMEOUT_S = 900.0
CHECKSUM_HINT = ("a download does not match its published checksum (altered or cut short on the way: a proxy, "
                 "a mirror?); nothing of it was kept here. Try again, or fetch through another network")
NO_CHECKSUM_HINT = ("the repository publishes no checksum for a download (a mirror in ~/.m2/settings.xml?), and "
                    "fetches are checked against theirs: use a repository that publishes them, such as Maven Central")
ACCESS_HINT = "check access to https://repo.maven.apache.org (or a mirror/proxy in ~/.m2/settings.xml)"

# Used only when the package runs outside a checkout (no deploy/kafka/pom.xml); keep in step with it.
_FALLBACK_POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.rendezvous-serving</groupId>
  <artifactId>local-kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.26.1</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>2.26.1</version></dependency>
  </dependencies>
</project>
"""


MIN_JAVA = 17  # Kafka 4's broker
_JAVA_VERSION = re.compile(r'version "(?:1\.)?(\d+)')


def java_executable() -> str:
    """`$JAVA_HOME/bin/java` if present, else `java` on PATH; `ConfigError` if neither, or if it
    is older than Java 17 (the broker would fail with a class-version error deep in its log)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        found: str | None = str(Path(home) / "bin" / "java")
    else:
        found = shutil.which("java")
    if not found:
        raise ConfigError(
            f"java not found: the local Kafka broker needs a Java {MIN_JAVA}+ runtime on PATH or in JAVA_HOME "
            "(e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    major = java_major(_version_text(found))
    if major is not None and major < MIN_JAVA:
        raise ConfigError(f"{found} is Java {major}: the local Kafka broker needs Java {MIN_JAVA} or newer "
                          "(set JAVA_HOME to one, e.g. `apt-get install openjdk-17-jre-headless`)")
    return found


def java_major(version_text: str) -> int | None:
    """The major version in `java -version`'s output (`1.8.0_402` is 8), None if it names none."""
    match = _JAVA_VERSION.search(version_text)
    return int(match.group(1)) if match else None


def _version_text(java: str) -> str:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{java} -version failed: {exc}") from None
    return done.stderr + done.stdout


def libs_dir() -> Path:
    return kafka_home() / "libs"


def _pom_path(home: Path) -> Path:
    if REPO_POM.is_file():
        return REPO_POM
    pom = home / "pom.xml"
    pom.parent.mkdir(parents=True, exist_ok=True)
    pom.write_text(_FALLBACK_POM)
    return pom


def _is_provisioned(libs: Path, pom_digest: str) -> bool:
    marker = libs.parent / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("pom_sha256") == pom_digest and any(libs.glob("kafka_2.13-*.jar")))


@contextmanager
def locked(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive lock so two processes provisioning at once do not interleave Maven runs (or two
    commands starting one broker do not both start it); `waiting` is called if another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAVEN_BOILERPLATE = ("To see the full stack trace", "Re-run Maven", "For more information", "[Help 1] http")


def _maven_output(output: str) -> list[str]:
    """Maven's output without colour codes, blank `[ERROR]` lines and its generic advice."""
    lines = (_ANSI.sub("", ln).rstrip() for ln in output.splitlines())
    return [
        ln for ln in lines
        if ln.removeprefix("[ERROR]").strip() and not any(b in ln for b in _MAVEN_BOILERPLATE)
    ]  # fmt: skip


def run_maven(pom: Path, goals: list[str], what: str) -> None:
    """`mvn -f pom goals...`, quiet; `BrokerError` with Maven's useful lines if it fails.
    `what` names what is fetched, for the messages ("the Kafka 4.4.0 jars")."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise ConfigError(
            f"mvn not found: {what} are fetched from Maven Central with Apache Maven "
            "(e.g. `apt-get install maven`), or point RDV_CACHE_DIR at a cache that already holds them"
        )
    # --strict-checksums: a download whose checksum does not match (or has none) fails the fetch.
    # By default Maven only warns and keeps it: a jar cut short or altered on the way would be run.
    cmd = [mvn, "-q", "-B", "--strict-checksums", "-Dstyle.color=never", "-f", str(pom), *goals]
    log.debug("running %s", " ".join(cmd))
    try:
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=MAVEN_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise BrokerError(f"Maven did not fetch {what} within {MAVEN_TIMEOUT_S:.0f} s") from err
    if done.returncode != 0:
        tail = "\n".join(_maven_output(done.stdout)[-15:])
        hint = _hint(done.stdout)
        raise BrokerError(f"Maven could not fetch {what} (exit {done.returncode}):\n{tail}\nhint: {hint}")


def _hint(output: str) -> str:
    if "no checksums available" in output:
        return NO_CHECKSUM_HINT
    return CHECKSUM_HINT if "Checksum validation failed" in output else ACCESS_HINT


def provision(progress: Progress | None = None) -> Path:
    """Return the directory of the broker's jars, running Maven first if they are not cached yet."""
    say = progress or (lambda _msg: None)
    home = kafka_home()
    libs = home / "libs"
    pom = _pom_path(home)
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _is_provisioned(libs, digest):
        return libs
    with locked(home / ".lock"):
        if _is_provisioned(libs, digest):  # another process finished while we waited
            return libs
        say(f"Fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...")
        started = time.monotonic()
        staging = home / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            run_maven(pom, ["dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
                      f"the Kafka {KAFKA_VERSION} jars")
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if not any(name.startswith("kafka_2.13-") for name in jars):
                raise BrokerError(f"Maven finished but left no kafka_2.13 jar in {staging}")
            (home / MARKER).unlink(missing_ok=True)
            shutil.rmtree(libs, ignore_errors=True)
            staging.rename(libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        info = {"kafka_version": KAFKA_VERSION, "pom_sha256": digest, "jars": jars, "at": time.time()}
        (home / MARKER).write_text(json.dumps(info, indent=1))
        say(f"Fetched {len(jars)} jars in {time.monotonic() - started:.1f} s")
    return libs

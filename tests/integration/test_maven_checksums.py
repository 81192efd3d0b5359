"""What Maven fetches for the local broker and registry (services/localkafka/jars.py) is checked
against its checksums: a jar altered or cut short on the way is refused, not run.

By default Maven only warns about a checksum that does not match and keeps the download. Real
Maven, a repository of the test's own (a directory, as a mirror would serve it) with one artifact
whose published SHA-1 is wrong, and the same artifact with the right one.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
import zipfile
from pathlib import Path

import pytest

from services.core.errors import BrokerError
from services.localkafka.jars import run_maven

GROUP = "io.rendezvous.checksumtest"
LOCAL_REPOSITORY = Path.home() / ".m2" / "repository"  # Maven's default, which the project's fetches use


def _publish(repo: Path, version: str, checksum: str) -> None:
    """A jar and its POM under `repo`, as Maven lays them out, each with a .sha1 file: the jar's
    `checksum` is "right", "wrong" or "none" (no file)."""
    folder = repo / Path(*GROUP.split(".")) / "fetched" / version
    folder.mkdir(parents=True)
    jar, pom = folder / f"fetched-{version}.jar", folder / f"fetched-{version}.pom"
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr("a.txt", "the bytes the publisher signed off")
    pom.write_text('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
                   f"<groupId>{GROUP}</groupId><artifactId>fetched</artifactId><version>{version}</version></project>")
    for path in (jar, pom):
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if path == jar and checksum == "none":
            continue
        path.with_name(path.name + ".sha1").write_text("0" * 40 if path == jar and checksum == "wrong" else digest)


def _project(tmp_path: Path, repo: Path, version: str) -> Path:
    pom = tmp_path / f"project-{version}.xml"
    pom.write_text(f"""<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>io.rendezvous.test</groupId><artifactId>fetcher</artifactId><version>1</version><packaging>pom</packaging>
<repositories><repository><id>test-mirror</id><url>{repo.as_uri()}</url></repository></repositories>
<dependencies><dependency><groupId>{GROUP}</groupId><artifactId>fetched</artifactId><version>{version}</version>
</dependency></dependencies></project>""")
    return pom


@pytest.fixture
def local_repository_cleaned() -> object:
    """The artifacts this test publishes are removed from Maven's local repository afterwards."""
    yield None
    shutil.rmtree(LOCAL_REPOSITORY / Path(*GROUP.split(".")), ignore_errors=True)


def test_a_download_whose_checksum_does_not_match_or_is_missing_is_refused(
    tmp_path: Path, local_repository_cleaned: object
) -> None:
    repo = tmp_path / "repo"
    # Versions never fetched before: Maven downloads them now instead of reading its local copy.
    altered, unchecked, intact = (f"t{uuid.uuid4().hex[:12]}" for _ in range(3))
    _publish(repo, altered, "wrong")
    _publish(repo, unchecked, "none")
    _publish(repo, intact, "right")

    def fetch(version: str) -> Path:
        out = tmp_path / f"out-{version}"
        run_maven(_project(tmp_path, repo, version), ["dependency:copy-dependencies", f"-DoutputDirectory={out}"],
                  "the test's jar")
        return out

    with pytest.raises(BrokerError, match=f"(?s)fetched:jar:{altered}.*Checksum validation failed.*hint: a download "
                       "does not match its published checksum"):
        fetch(altered)
    assert not (tmp_path / f"out-{altered}").exists()
    local = LOCAL_REPOSITORY / Path(*GROUP.split(".")) / "fetched"
    assert not (local / altered / f"fetched-{altered}.jar").exists()  # not kept for a later fetch either
    with pytest.raises(BrokerError, match=f"(?s)fetched:jar:{unchecked}.*no checksums available.*hint: the "
                       "repository publishes no checksum"):
        fetch(unchecked)
    assert [p.name for p in fetch(intact).iterdir()] == [f"fetched-{intact}.jar"]  # the refusal was the checksum's

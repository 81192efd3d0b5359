"""The gaps an archive's manifest names (services/decoy/archive.py): records the topic deleted
before the decoy archived them, kept across the manifest's rewrites, for replay to say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.core.errors import ConfigError
from services.decoy.archive import MANIFEST, ArchiveWriter, Gap, read_gaps, read_manifest
from tests.unit.test_decoy_archive_damage import ROLL, rows


def test_a_gap_is_named_once_and_kept_as_files_are_sealed_and_the_writer_starts_again(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, **ROLL)
    gap = Gap("rdv.requests", 0, 10, 14, 1_700_000_000_000)
    writer.note_gap(gap)
    writer.note_gap(Gap("rdv.requests", 0, 10, 14, 1_700_000_009_000))  # found again (no commit past it yet)
    writer.note_gap(Gap("rdv.requests", 0, 10, 12, 1_700_000_009_500))  # shorter: what was named holds it
    writer.append(rows(15, 3))
    writer.roll()  # the manifest is written again, with the new file
    writer.close()
    assert read_gaps(tmp_path) == [gap]
    again = ArchiveWriter(tmp_path, **ROLL)
    later = Gap("rdv.requests", 1, 0, 4, 1_700_000_100_000)
    again.note_gap(later)
    longer = Gap("rdv.requests", 0, 10, 40, 1_700_000_200_000)  # retention deleted more before a commit
    again.note_gap(longer)
    again.close()
    assert read_gaps(tmp_path) == [later, longer] and [f.records for f in read_manifest(tmp_path)] == [3]


def test_a_manifest_written_before_gaps_were_named_has_none(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 2))
    writer.close()
    data = json.loads((tmp_path / MANIFEST).read_text())
    del data["gaps"]
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    assert read_gaps(tmp_path) == [] and [f.records for f in read_manifest(tmp_path)] == [2]


@pytest.mark.parametrize("gaps", [[{"topic": "t", "partition": "0", "first": 1, "last": 2, "noticed_at": 3}],
                                  [{"topic": "t", "partition": 0, "first": 1, "last": True, "noticed_at": 3}],
                                  [{"topic": "t", "partition": 0}], "not a list", [["t", 0, 1, 2, 3]]])
def test_a_hand_edited_gap_entry_is_refused_in_one_line(tmp_path: Path, gaps: object) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"files": [], "gaps": gaps}))
    with pytest.raises(ConfigError, match=r"^archive manifest .*manifest\.json is unreadable: "):
        read_gaps(tmp_path)


@pytest.mark.parametrize(("given", "start_from", "refused"), [
    ("earliest", "earliest", False), ("latest", "latest", False), ("latest", "earliest", True),
])  # fmt: skip
def test_a_decoys_kafka_config_reset_equal_to_its_start_from_is_taken(
    given: str, start_from: str, refused: bool
) -> None:
    """The decoy runs its consumer with auto.offset.reset=error (it chooses every start itself): a
    --kafka-config auto.offset.reset equal to --start-from, taken before, was refused as a setting
    the service sets otherwise (a review)."""
    from services.decoy.service import Decoy
    from services.decoy.settings import DecoySettings

    settings = DecoySettings(bootstrap="127.0.0.1:9", start_from=start_from,
                             kafka_config=(f"auto.offset.reset={given}",))
    if refused:
        with pytest.raises(ConfigError, match=r"auto\.offset\.reset: decoy sets it itself"):
            Decoy(settings)
    else:
        assert Decoy(settings).service.spec.consumer_config["auto.offset.reset"] == "error"

"""Process-wide state every unit test leaves as it found it (pytest-xdist runs many modules in one process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.core import redaction


@pytest.fixture(autouse=True)
def _redaction_registry_restored() -> Iterator[None]:
    """The values a test's settings registered as never to be printed are forgotten after it.

    Parsing --kafka-config registers its values in the process' registry, and every later message
    is masked by them: after test_settings ('admin', 'read' from a SASL config), a test of another
    module found "not authorized to *** topic rdv.log" where it expected "read" (forced by running
    test_settings.py before test_gateway.py)."""
    before = set(redaction._values)
    yield
    redaction.forget_all()
    for value in before:
        redaction.never_print(value)


@pytest.fixture(autouse=True)
def _command_registry_waits_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test a command's own budget of waits for the schema registry (`decoded_when_readable`):
    one per process, a test that spent it made a later one's records count unreadable at once."""
    from services.core import id_lookup

    monkeypatch.setattr(id_lookup, "_COMMAND_WAITS", id_lookup.CommandWaits())

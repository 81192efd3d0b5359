"""An output a takeover's scan cannot decode (services/rendezvous/recovery.py `_unreadable`)."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from services.core.errors import DecodeFailed, UnknownFingerprint
from services.rendezvous.join import Finished
from services.rendezvous.recovery import ScanUnreadable, _unreadable


def test_one_that_may_be_read_later_makes_recovery_wait_instead_of_deciding_its_request_again() -> None:
    finished = Finished({}, set())
    away = DecodeFailed("the schema registry did not answer", retriable=True)
    with pytest.raises(ScanUnreadable, match=r"rdv\.answers\[2\]@7 cannot be read yet \(the schema registry") as held:
        _unreadable(finished, "rdv.answers", Message(topic="rdv.answers", partition=2, offset=7, key=b"q"), away)
    assert finished.logged == set()
    assert held.value.partition == 2  # the others are recovered without it (takeover.py run_due)


def test_one_that_never_can_counts_its_key_as_a_request_done() -> None:
    finished = Finished({}, set())
    unknown = UnknownFingerprint("unknown writer schema fingerprint 00 for Answer")
    _unreadable(finished, "rdv.answers", Message(topic="rdv.answers", partition=2, offset=7, key=b"q"), unknown)
    _unreadable(finished, "rdv.log", Message(topic="rdv.log", partition=2, offset=9, key=b"\xff"), unknown)
    _unreadable(finished, "rdv.log", Message(topic="rdv.log", partition=2, offset=10), unknown)
    assert finished.logged == {"q"} and finished.partition_of == {"q": 2} and finished.answered == {}

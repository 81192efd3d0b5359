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


def test_an_answer_s_inputs_digest_is_read_from_its_header_and_a_later_one_without_forgets_it() -> None:
    """Which inputs an answer answered (request_inputs.INPUTS_HEADER): a new owner refuses another request
    under the id with other inputs instead of giving it this answer (join.Finished.inputs)."""
    from services.core.request_inputs import INPUTS_HEADER
    from services.rendezvous.recovery import _note_inputs, _remembered

    finished = Finished({}, set())
    with_digest = Message(topic="rdv.answers", partition=1, offset=3, key=b"x", value=b"answer", timestamp=(1, 5),
                          headers=[("ce_id", b"1"), (INPUTS_HEADER, b"digest")])
    _remembered(finished, with_digest)
    assert finished.inputs == {"x": b"digest"} and finished.remembered["x"][0] == 1
    _note_inputs(finished, "x", Message(topic="rdv.answers", partition=1, offset=4, key=b"x", value=b"again"))
    assert finished.inputs == {}  # the id's latest answer names no inputs: not known

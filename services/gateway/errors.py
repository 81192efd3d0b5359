"""What can go wrong with a call, and the one table that turns it into an HTTP and a gRPC status.

Every failure a caller sees is a `RendezvousError` (services/core/errors.py): the gateway's own
(below), the client's (`NoReplyPartition`, `ReplyPartitionLost`, `AnswerTimeout`) or the core's
(a broker that went away). `status_of` is the only place that maps them; REST and gRPC both ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from services.client.client import InvalidRequest
from services.core.errors import BrokerError, KafkaOperationError, RecordTooLarge, RendezvousError
from services.core.redaction import mask


class CallError(RendezvousError):
    """A call the gateway refuses or cannot complete; the subclass decides the status."""


class InvalidInput(CallError):
    """The call is malformed: the message names the problem (400 / INVALID_ARGUMENT)."""


class BodyTooLarge(CallError):
    """The request body is over --max-body-bytes (413 / RESOURCE_EXHAUSTED)."""


class CrossOrigin(CallError):
    """A call from a web page of another origin (403; REST only)."""


class UnsupportedMediaType(CallError):
    """The body's Content-Type is one the gateway refuses (415; REST only)."""


class NotFound(CallError):
    """No such model, schedule or version (404 / NOT_FOUND)."""


class Unauthenticated(CallError):
    """No API key, or not an accepted one (401 / UNAUTHENTICATED)."""


class RateLimited(CallError):
    """The key is over its rate limit (429 / RESOURCE_EXHAUSTED); `retry_after_s`: when a call
    would be let through again (REST's Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AnswerTimedOut(CallError):
    """The rendezvous answered TIMEOUT: no usable score by the deadline (504 / DEADLINE_EXCEEDED)."""


class AnswerFailed(CallError):
    """The rendezvous answered ERROR: every model failed (502 / UNAVAILABLE)."""


class Unavailable(CallError):
    """The gateway cannot serve the call now: draining, overloaded, no answer in time (503 / UNAVAILABLE)."""

    retriable = True


class TurnedAway(Unavailable):
    """Unavailable, said before anything of the call was sent (draining, broken, Kafka away,
    overloaded): the caller's rate-limit token is given back (`Gateway.spending`)."""

    nothing_sent = True  # the mark `spending` reads (set on other errors too, by `Gateway._send`)


class ClientClosed(CallError):
    """The caller went away before its request was read whole: no one to answer (nginx's 499)."""


class BodyTooSlow(CallError):
    """The REST guard closed the connection: the body did not arrive in time (408)."""


class UnreadableFraming(CallError):
    """The REST guard closed the connection: the HTTP parser could not read the body's framing
    (a bad chunk size, an unknown Transfer-Encoding; 400)."""


@dataclass(frozen=True)
class Status:
    http: int
    grpc: grpc.StatusCode
    message: str
    reason: str  # label of the rejected-calls metric

    @property
    def retry(self) -> bool:
        return self.http in (429, 503)


# Most specific first: the first class an exception is an instance of decides.
_TABLE: tuple[tuple[type[BaseException], int, grpc.StatusCode, str], ...] = (
    (InvalidInput, 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
    # The client library's refusal of a request: the gateway's own checks come first today; one
    # they missed was a 503, which callers retry (a review).
    (InvalidRequest, 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
    (ClientClosed, 499, grpc.StatusCode.CANCELLED, "client_closed"),
    (BodyTooSlow, 408, grpc.StatusCode.DEADLINE_EXCEEDED, "body_too_slow"),
    (UnreadableFraming, 400, grpc.StatusCode.INVALID_ARGUMENT, "bad_request"),
    (BodyTooLarge, 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
    # A request too large for a Kafka record: sending it again would meet the same refusal.
    (RecordTooLarge, 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
    (CrossOrigin, 403, grpc.StatusCode.PERMISSION_DENIED, "cross_origin"),
    (UnsupportedMediaType, 415, grpc.StatusCode.INVALID_ARGUMENT, "media_type"),
    (NotFound, 404, grpc.StatusCode.NOT_FOUND, "not_found"),
    (Unauthenticated, 401, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    (RateLimited, 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited"),
    (AnswerTimedOut, 504, grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
    (AnswerFailed, 502, grpc.StatusCode.UNAVAILABLE, "error"),
    (Unavailable, 503, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    # The client's (no reply partition, a partition that moved, no answer) and the broker's.
    (BrokerError, 503, grpc.StatusCode.UNAVAILABLE, "broker"),
    (KafkaOperationError, 503, grpc.StatusCode.UNAVAILABLE, "broker"),
    (RendezvousError, 503, grpc.StatusCode.UNAVAILABLE, "unavailable"),
)
_SERVERS_TEXT = frozenset({RecordTooLarge, Unavailable, BrokerError, KafkaOperationError, RendezvousError})


# A status message echoes what the caller sent (names, values): a longer one did not fit gRPC's
# 16 KiB trailer once percent-encoded, and the caller got RESOURCE_EXHAUSTED without the reason.
MAX_MESSAGE_CHARS = 1000
# ... nor does one of 1,000 characters outside ASCII: gRPC percent-encodes each of their UTF-8
# bytes (%F0%9F%98%80, 12 characters for one emoji), and grpc's clients refuse trailers over
# 8 KiB (RESOURCE_EXHAUSTED instead of the reason, a review). Cut to this once encoded.
MAX_MESSAGE_ENCODED = 6000


def status_of(exc: BaseException) -> Status:
    """The HTTP and gRPC status of a failed call; anything unforeseen is a 500 / INTERNAL."""
    for kind, http, code, reason in _TABLE:
        if isinstance(exc, kind):
            # Masked: a Kafka error's text may quote a setting's value (the body goes to any caller).
            # Not the caller's own text (its input names and values, a model's refusal of them):
            # masked, a guess equal to a secret came back as *** and confirmed it.
            message = mask(str(exc)) if kind in _SERVERS_TEXT else str(exc)
            return Status(http, code, cut_message(message), reason)
    return Status(500, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}", "internal")


def cut_message(message: str) -> str:
    """`message` within MAX_MESSAGE_CHARS characters and, percent-encoded as gRPC sends it, within
    MAX_MESSAGE_ENCODED bytes ("..." at the end of one cut)."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    if message.isascii():  # at most 3 bytes each, 3,000 in all
        return message
    size = 0
    for index, char in enumerate(message):
        size += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "replace"))
        if size > MAX_MESSAGE_ENCODED - 3:
            return message[:index] + "..."
    return message

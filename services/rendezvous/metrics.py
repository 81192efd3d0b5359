"""Prometheus metrics of the rendezvous (names are the contract dashboards build on)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.core.metrics import LATENCY_BUCKETS

REQUESTS = Counter("rdv_requests_total", "Requests read by the rendezvous.")
DUPLICATE_REQUESTS = Counter(
    "rdv_duplicate_requests_total", "Request records seen again for a known request_id."
)
CONFLICTING_REQUESTS = Counter(
    "rdv_conflicting_requests_total",
    "Requests under a known request_id with other features or payload: answered ERROR, not scored.",
)
SCORES = Counter("rdv_scores_total", "Scores read by the rendezvous, by model.", ["model", "version"])
ELSEWHERE = Counter(
    "rdv_partition_mismatches_total",
    "Records whose request_id is open on another partition number (kind: score, request): a score is "
    "dropped, a request answered ERROR; a request and its scores share a partition number, so the "
    "join's decisions and commits stay per partition.",
    ["kind"],
)
SCORES_REFUSED = Counter(
    "rdv_scores_refused_total",
    "Scores of a model beyond the 256 the rendezvous tracks at once (models silent for model_ttl are forgotten), "
    "or beyond the 64 a request keeps from models its schedule does not name, or of such a model once held scores "
    "reach --max-held-bytes.",
)
DUPLICATE_SCORES = Counter(
    "rdv_duplicate_scores_total", "Scores of a model for a request it had already scored.", ["model"]
)
ANSWERS = Counter(
    "rdv_answers_total",
    "Answers sent, by chosen model (empty on TIMEOUT/ERROR) and status (OK, FALLBACK, TIMEOUT, ERROR).",
    ["model", "status"],
)
FALLBACKS = Counter(
    "rdv_fallbacks_total", "Answers given by a model other than the preferred one.", ["model"]
)
TIMEOUTS = Counter(
    "rdv_timeouts_total", "Requests answered with an explicit TIMEOUT (no usable score in time)."
)
LATE_SCORES = Counter(
    "rdv_late_scores_total",
    "Scores that arrived after the answer was sent (not those past their wait before it, which the "
    "comparison log calls late too); after_log=true ones came after the comparison record.",
    ["model", "after_log"],
)
OUTPUTS_CUT = Counter(
    "rdv_outputs_cut_total",
    "Answers and comparison records too large for a Kafka record (a score's long label or error): written "
    "with their strings cut (outcome=cut) or, if still too large, left out (outcome=left_out).",
    ["output", "outcome"],
)
ORPHAN_SCORES = Counter(
    "rdv_orphan_scores_total",
    "Scores dropped because their request never arrived within the grace period, or beyond --max-orphans or "
    "--max-held-bytes (the oldest).",
)
HANGING_SEALS = Counter(
    "rdv_hanging_transaction_seals_total",
    "Seal records written to end a transaction the broker left hanging across a restart (docs/failover.md).",
    ["topic"],
)
REPLIES_REPEATED = Counter(
    "rdv_replies_repeated_total",
    "Answers sent to a return address again (a repeated request, a re-read one after a restart), or "
    "the ERROR of a request reusing a request_id with other inputs.",
)
REPLY_ERRORS = Counter(
    "rdv_reply_errors_total", "Answers that could not be written to the request's return address.", ["reason"]
)
SCORE_LATENCY = Histogram(
    "rdv_score_latency_seconds",
    "Request created_at to the model's score arriving at the rendezvous, by model.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
ANSWER_LATENCY = Histogram(
    "rdv_answer_latency_seconds",
    "Request created_at to the answer being sent, by status.",
    ["status"],
    buckets=LATENCY_BUCKETS,
)
DEADLINE_SLACK = Histogram(
    "rdv_answer_after_deadline_seconds",
    "How long after its deadline an answer was sent (0 when on time).",
    buckets=(0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
CLOCK_RECORDS = Counter(
    "rdv_clock_records_total", "Clock records written to quiet scores partitions so their log clock moves (clock.py)."
)
CLOCK_RECORD_FAILURES = Counter(
    "rdv_clock_record_failures_total",
    "Clock records the broker did not take (asked again while their partition's timer is due; the client's own "
    "log line says why).",
)
MAILBOXES = Gauge("rdv_mailboxes_open", "Requests in flight (answered-but-not-logged included).")
ORPHANS = Gauge("rdv_orphans_waiting", "Request ids whose scores came first and wait for their request "
                "(at most --max-orphans).")
HELD_BYTES = Gauge("rdv_held_score_bytes", "Bytes held for scores not joined yet (orphans', unscheduled models'), "
                   "estimated (at most --max-held-bytes).")
SCHEDULE = Gauge(
    "rdv_schedule_info", "The schedule in force (value 1), by name, version and preferred model.",
    ["name", "version", "preferred"],
)
SCHEDULE_UPDATES = Counter("rdv_schedule_updates_total", "Schedule versions accepted from the control topic.")
SCHEDULE_LATE = Counter(
    "rdv_schedule_late_total",
    "Schedule versions read only after their effective time (publish them with a longer --effective-in).",
)
SCHEDULE_REJECTED = Counter(
    "rdv_schedule_rejected_total",
    "Control records refused (malformed, a version number out of order, or a start the log does not allow).",
)
RECOVERED = Counter(
    "rdv_recovered_total",
    "Re-read requests found already answered/logged after a restart (not decided again; replies sent again).",
    ["what"],
)
PAUSED = Gauge("rdv_requests_paused", "1 while request intake is paused (mailbox table full, or draining).")
SCORES_HELD = Gauge(
    "rdv_scores_held_partitions",
    "Score partitions paused while their requests lag (reading a backlog): from half of --max-orphans "
    "waiting for their requests (or of --max-held-bytes held for them), until below a quarter.",
)
TRANSACTIONS = Counter("rdv_transactions_total", "Transactions ended, by outcome (committed | aborted).", ["outcome"])

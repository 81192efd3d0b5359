"""The RDV_* environment variables this project reads, and a warning for any other one set.

Why: every flag reads a variable, and a misspelt one (RDV_DEADLIN_MS=500 in a pod spec) was
ignored without a word: the service ran on the default. A command says at start-up which RDV_*
variables it finds that nothing here reads, with the nearest known name.

The list is static, so a command need not import every other command's settings (`serve` would
load the report's and the gateway's code to know their flags); tests/unit/test_variables.py
derives it from every command's flags and from the names in the source, and fails when the two
differ.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

PREFIX = "RDV_"

KNOWN = frozenset({
    "RDV_ALLOWED_HOSTS", "RDV_ANSWER_GRACE_MS", "RDV_API_KEYS_FILE", "RDV_API_KEY_HASHES", "RDV_ARCHIVE_DIR",
    "RDV_BATCH", "RDV_BENCH_LOGS", "RDV_BROKER_CDS", "RDV_BROKER_JVM_OPTS", "RDV_BROKER_PROPERTIES",
    "RDV_BROKER_REQUEST_LOG", "RDV_BROKER_WARMUP", "RDV_BUCKET", "RDV_BUCKETS", "RDV_BUDGET_MS", "RDV_CACHE_DIR",
    "RDV_CANARY", "RDV_CHAMPION", "RDV_CLOCK_RECORD_DELAY_MS", "RDV_CLOUDEVENTS", "RDV_CODEC", "RDV_COMMENT",
    "RDV_COMMIT_INTERVAL_MS", "RDV_COMPARISON_GRACE_MS", "RDV_COMPARISON_URL", "RDV_CONNECT_TIMEOUT_S", "RDV_CO_HOST",
    "RDV_DEADLINE_MS", "RDV_DEAD_LETTER", "RDV_DEMO_ROWS", "RDV_DEMO_SLOW_MS", "RDV_DRAIN_TIMEOUT_S", "RDV_DURATION",
    "RDV_EFFECTIVE_IN", "RDV_EXPORT_INTERVAL_S", "RDV_FEATURES", "RDV_FILE", "RDV_FORCE", "RDV_FORMAT", "RDV_FROM",
    "RDV_FUTURE_TOLERANCE_S", "RDV_GROUP", "RDV_GRPC_ADDR", "RDV_GRPC_PORT", "RDV_GRPC_REPLY_MARGIN_MS",
    "RDV_HTML", "RDV_HTTP_ADDR", "RDV_HTTP_PORT", "RDV_IGNORE_EXTRA_FEATURES", "RDV_INSTANCE", "RDV_KAFKA_CONFIG",
    "RDV_LINGER_MS",
    "RDV_LIVE_WINDOW_S", "RDV_MAX_BATCH", "RDV_MAX_BODY_BYTES", "RDV_MAX_BUDGET_MS", "RDV_MAX_CONNECTIONS",
    "RDV_MAX_FEATURES", "RDV_MAX_HELD_BYTES", "RDV_MAX_IN_FLIGHT", "RDV_MAX_MAILBOXES", "RDV_MAX_MODELS",
    "RDV_MAX_ORPHANS", "RDV_MAX_RECORDS", "RDV_MAX_ROWS", "RDV_METRICS_BASE_PORT", "RDV_METRICS_HOST",
    "RDV_METRICS_PORT", "RDV_MODEL", "RDV_MODELS", "RDV_MODEL_TTL_S", "RDV_NAME", "RDV_NEW_SCHEDULE", "RDV_NUMBA_SEED",
    "RDV_ORPHAN_GRACE_MS", "RDV_OUTPUT_LINGER_MS", "RDV_PARTITIONS", "RDV_PREDICT_TIMEOUT_S", "RDV_PRINCIPAL",
    "RDV_PROCESSING", "RDV_PRUNE", "RDV_RATE", "RDV_RATE_BURST", "RDV_RATE_BURST_ROWS", "RDV_RATE_LIMIT",
    "RDV_RATE_LIMIT_ROWS", "RDV_RECOVERY_MARGIN_S", "RDV_REFERENCE_SIZE", "RDV_REGISTRY_JAVA_HOME", "RDV_REGISTRY_PORT",
    "RDV_RENDEZVOUS", "RDV_REPLICAS", "RDV_REPLY_GROUP", "RDV_REPLY_TOPICS", "RDV_REQUIRE",
    "RDV_RETAIN_HOURS", "RDV_ROLL_MB", "RDV_ROLL_SECONDS", "RDV_SCHEDULE", "RDV_SCHEDULE_FILE", "RDV_SCHEDULE_NAME",
    "RDV_SCHEMA_DIR",
    "RDV_SCHEMA_REGISTRY", "RDV_SESSION_TIMEOUT_MS", "RDV_SINCE", "RDV_SOURCE", "RDV_STALL_TIMEOUT_MS",
    "RDV_START_AT", "RDV_START_FROM", "RDV_STOP_WITH_PID", "RDV_SUPERSEDE_PENDING", "RDV_TLS_CERT", "RDV_TLS_KEY",
    "RDV_TO", "RDV_TOPIC",
    "RDV_TOPIC_PREFIX", "RDV_TRAFFIC", "RDV_TRANSACTION_TIMEOUT_MS", "RDV_TRUST_MODEL_FILE", "RDV_UI",
    "RDV_UI_MAX_VIEWERS", "RDV_VERSION", "RDV_WAIT", "RDV_WAIT_S", "RDV_WINDOW", "RDV_WINDOW_S", "RDV_WIRE_FORMAT",
    "RDV_WORKERS",
})


BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"  # the one variable read without the prefix


def unknown_variables(names: Iterable[str], known: frozenset[str] = KNOWN) -> list[str]:
    """One line for each RDV_* name in `names` that nothing reads, with the nearest known name;
    and for a name near KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVER=h:9092 had every command
    use the local broker, `models` exiting 0 on it: a review). Other KAFKA_* names belong to
    other tools (KAFKA_HEAP_OPTS)."""
    lines = []
    for name in sorted(names):
        if name.startswith(PREFIX) and name not in known:
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        elif name.startswith("KAFKA_") and name != BOOTSTRAP:
            near = difflib.get_close_matches(name, [BOOTSTRAP], n=1, cutoff=0.8)
            if not near:
                continue
        else:
            continue
        hint = f" (did you mean {near[0]}?)" if near else ""
        lines.append(f"{name} is set, but no rendezvous command reads it{hint}: it changes nothing")
    return lines


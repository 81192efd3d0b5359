"""How long a Score's strings may be: the model workers write within these, and the rendezvous
refuses a score beyond them (or cuts its error text), so that what it keeps per score stays small
whatever a forged score carries (a label near the record size, kept by every mailbox it joins)."""

from __future__ import annotations

# A longer label is that request's error (a class name is short; a label near Kafka's record size
# would make the Score, and the answer that carries it, impossible to write).
MAX_LABEL_CHARS = 1024
MAX_ERROR_CHARS = 1000  # an error message is cut here: a Score stays small whatever a model raises
MAX_VERSION_CHARS = 1024
# A model's name is also a metric label value (at most 256 of them): a worker's is at most 100
# characters (model_worker/settings.py); a forged one of a megabyte went out on every scrape.
MAX_MODEL_CHARS = 1024


def oversized(label: str | None, version: str, model: str = "") -> str | None:
    """Why a score's label, version or model name is too long to be joined; None when none is."""
    if label is not None and len(label) > MAX_LABEL_CHARS:
        return f"a label of {len(label)} characters (at most {MAX_LABEL_CHARS})"
    if len(version) > MAX_VERSION_CHARS:
        return f"a version of {len(version)} characters (at most {MAX_VERSION_CHARS})"
    if len(model) > MAX_MODEL_CHARS:
        return f"a model name of {len(model)} characters (at most {MAX_MODEL_CHARS})"
    return None

"""What a model may be called: the rule a worker's name follows, checked wherever a name is authored
(a worker's --name, a deployment, a schedule file or flag), so a schedule never names a model no
worker could be."""

from __future__ import annotations

import re

from services.core.errors import ConfigError

# A model's name is part of its consumer group's and of a deployment's folder name: 'a b' made the
# group "rdv.model.a b", 'a/b' nested folders, and 'a+b' the group of model a co-hosting b.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# The metric label of the names past a budget (the rendezvous', the comparison service's): one no
# model can have, as names start with a letter or digit, so that a model named "other" keeps
# series of its own.
FOLDED_NAMES = "_other"


def check_model_name(name: str, what: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"{what} {name[:120]!r}: use letters, digits, '.', '_' and '-' (at most 100, starting "
                          "with a letter or digit)")

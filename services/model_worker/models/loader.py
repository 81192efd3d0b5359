"""Turn a model spec string into a loaded Model.

    demo:<name>              a demo model (champion, challenger, canary, slow, flaky, contrarian)
    path/to/model.skops      a scikit-learn estimator saved with skops.io.dump (safe: recommended)
    path/to/model.joblib     a scikit-learn estimator saved with joblib (also *.pkl, *.pickle): a
                             pickle runs any code it holds, so only with trust_model_file
    path/to/model.onnx       an ONNX model (needs the onnx extra)
    module.path:factory      import the module, call factory() with no arguments; it must return
                             an object with name, version, feature_names, load() and predict()
                             (and optionally `signature`); importing it runs its code, as any
                             import does: only modules you installed

Every failure is a ModelSpecError whose message names the spec and what to do about it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from services.core.errors import ModelSpecError, RendezvousError
from services.core.settings import not_a_readable_file

from .base import Model, model_signature

__all__ = ["MODEL_FILE_SUFFIXES", "SPEC_FORMS", "load_model"]

SPEC_FORMS = (
    "demo:<name>, path/to/model.skops, path/to/model.onnx, path/to/model.joblib (or .pkl; needs "
    "--trust-model-file), or module.path:factory"
)
_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")  # run code when loaded: only with trust_model_file
_SKLEARN_SUFFIXES = (".skops", *_PICKLE_SUFFIXES)
_ONNX_SUFFIX = ".onnx"
MODEL_FILE_SUFFIXES = (*_SKLEARN_SUFFIXES, _ONNX_SUFFIX)  # a spec ending so names a file
_REQUIRED = ("name", "version", "feature_names", "load", "predict")


def load_model(spec: str, *, trust_model_file: bool = False) -> Model:
    """Resolve `spec`, call the model's load() and return it; raise ModelSpecError if that fails.

    `trust_model_file` allows pickle/joblib files (which run code when loaded) and skops files
    holding types skops does not trust by default.
    """
    spec = spec.strip()
    if not spec:
        raise ModelSpecError(f"empty model spec; use one of {SPEC_FORMS}")
    model = _resolve(spec, trust_model_file)
    try:
        model.load()
    except RendezvousError:
        raise
    except Exception as err:
        raise ModelSpecError(
            f"model spec {spec!r}: load() failed ({type(err).__name__}: {err}); fix the model or its files"
        ) from err
    _check_feature_names(spec, model)
    model_signature(model)  # a declared signature must fit feature_names: fail at load, not per request
    return model


def check_spec(spec: str, *, trust_model_file: bool = False) -> None:
    """ModelSpecError if `spec` names no model this machine could load (the model is not loaded:
    a command that starts workers checks their specs first, in a moment, with the loader's words)."""
    spec = spec.strip()
    if not spec:
        raise ModelSpecError(f"empty model spec; use one of {SPEC_FORMS}")
    _resolve(spec, trust_model_file)
    if not trust_model_file and spec.lower().endswith(_PICKLE_SUFFIXES):
        # The refusal the load would give, said now: replay asked the broker first (a review).
        from .sklearn_model import pickle_refusal

        raise pickle_refusal(Path(spec).expanduser())


def _resolve(spec: str, trust_model_file: bool) -> Model:
    if spec.startswith("demo:"):
        return _demo(spec, spec.removeprefix("demo:"))
    lower = spec.lower()
    if lower.endswith(MODEL_FILE_SUFFIXES):
        path = Path(spec).expanduser()
        problem = not_a_readable_file(path)
        if problem:
            raise ModelSpecError(f"model spec {spec!r}: {problem} ({os.path.abspath(path)!r}); check the path")
        if lower.endswith(_ONNX_SUFFIX):
            from .onnx_model import OnnxModel

            return OnnxModel(path)
        from .sklearn_model import SklearnModel

        return SklearnModel(path, trust_model_file=trust_model_file)
    if ":" in spec:
        return _factory(spec)
    raise ModelSpecError(f"model spec {spec!r} is not recognised; use one of {SPEC_FORMS}")


def _demo(spec: str, name: str) -> Model:
    from .demo import DEMO_MODELS

    factory = DEMO_MODELS.get(name)
    if factory is None:
        known = ", ".join(f"demo:{n}" for n in DEMO_MODELS)
        raise ModelSpecError(f"unknown demo model {spec!r}; known demo models: {known}")
    return factory()


def _factory(spec: str) -> Model:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ModelSpecError(f"model spec {spec!r} is not recognised; use one of {SPEC_FORMS}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelSpecError(
            f"model spec {spec!r}: cannot import module {module_name!r} ({err}); "
            "check the name and that it is installed or on PYTHONPATH"
        ) from err
    except Exception as err:
        raise ModelSpecError(
            f"model spec {spec!r}: importing module {module_name!r} failed ({type(err).__name__}: {err})"
        ) from err
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ModelSpecError(
                f"model spec {spec!r}: module {module_name!r} has no attribute {attr_path!r}; "
                "name a zero-argument function that returns the model"
            ) from None
    if not callable(target):
        raise ModelSpecError(
            f"model spec {spec!r}: {attr_path!r} is not callable; name a zero-argument function "
            "that returns the model"
        )
    try:
        model = target()
    except Exception as err:
        raise ModelSpecError(
            f"model spec {spec!r}: calling {attr_path}() failed ({type(err).__name__}: {err}); "
            "the factory must take no arguments and return the model"
        ) from err
    missing = [
        attr
        for attr in _REQUIRED
        if not hasattr(model, attr) or (attr in ("load", "predict") and not callable(getattr(model, attr)))
    ]
    if missing:
        raise ModelSpecError(
            f"model spec {spec!r}: {attr_path}() returned a {type(model).__name__}, which lacks "
            f"{', '.join(missing)}; return an object with name, version, feature_names, load() and predict()"
        )
    result: Model = model
    return result


def _check_feature_names(spec: str, model: Model) -> None:
    names = model.feature_names
    if (
        not isinstance(names, (tuple, list))  # a list reads as well everywhere (it was refused)
        or not names
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != len(names)
    ):
        raise ModelSpecError(
            f"model spec {spec!r}: feature_names must be a non-empty tuple or list of distinct strings after "
            f"load(), got {names!r}"
        )

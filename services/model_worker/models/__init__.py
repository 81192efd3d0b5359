"""Models behind the worker's seam: the `Model` protocol, spec loading and the demo models.

Usage:

    from services.model_worker.models import load_model, features_to_matrix
    model = load_model("demo:champion")            # or a .joblib / .onnx path, or module:factory
    predictions = model.predict(features_to_matrix(rows, model.feature_names))
"""

from .base import Model, Prediction, features_to_matrix
from .demo import DEMO_FEATURES, demo_rows
from .loader import load_model

__all__ = ["DEMO_FEATURES", "Model", "Prediction", "demo_rows", "features_to_matrix", "load_model"]

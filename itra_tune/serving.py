"""The MLflow model of an itra_tune classifier, loaded by MLflow from this file ("models from code").

The model carries an export folder (``itra_tune.export``: configuration, meta and a state dict); loading
rebuilds the network from the configuration and reads the weights with ``weights_only=True``, so no pickled
object is executed. This file is MLflow's to load; the package never imports it.

Input: image models take float32 pixels in [0, 1], shape (B, C, H, W) (the digits: raw value / 16); text models
take int64 token ids (B, L), right-padded with -1. Output: ``logits`` (B, K), ``probabilities`` (B, K, softmax
of the logits), ``class`` (B,) and, when the training data named its classes, ``label`` (B,), the class's name.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class ITRAClassifier(PythonModel):
    """Logits, class probabilities, the predicted class and its name of a trained itra_tune classifier."""

    # The signature logged with the model describes its tensors; MLflow's type-hint validation, which would
    # otherwise warn at every load that predict has no hints, expects lists of records and does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context):
        from itra_tune import export

        self.model = export.load(context.artifacts["export"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        from itra_tune import export

        return export.predictions(self.model, torch.as_tensor(np.asarray(model_input)))


mlflow.models.set_model(ITRAClassifier())

"""Verification: every check that a written model behaves, in one place.

Three checks, each raising :class:`~onnxprune.errors.VerificationError` with one line:

* :func:`check_model`: the full ONNX checker passes and onnxruntime opens the model;
* :func:`check_runs`: on the same seeded input, the pruned model's outputs keep the original's
  shapes and are finite;
* :func:`shadow_parity`: how far the shadow (what retraining trains) is from onnxruntime on the
  written model, for the report (the design's first invariant, measured on the user's model).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from onnxprune import modelio
from onnxprune.errors import UnsupportedModelError, VerificationError
from onnxprune.shadow import ShadowModel
from onnxprune.training.data import Dataset


def check_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return ``model`` once it passes the full checker and opens in onnxruntime."""
    try:
        onnx.checker.check_model(model, full_check=True)
        modelio.session(model)
    except Exception as e:  # the checker and onnxruntime raise several types
        raise VerificationError(f"the pruned model fails the checker: {e}") from e
    return model


def check_runs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Run both models on the same input; ``after``'s outputs must keep their shapes, finite."""
    feeds = modelio.random_inputs(before, batch=2)
    for a, b in zip(modelio.run(before, feeds), modelio.run(after, feeds), strict=True):
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            raise VerificationError(f"the pruned model's output changed shape {a.shape} -> "
                                    f"{b.shape} or is not finite")


def shadow_parity(model: onnx.ModelProto, val: Dataset | None) -> float | None:
    """Max abs difference between the shadow and onnxruntime on ``model``'s outputs.

    Measured on a batch of ``val`` when there is one, else on seeded random inputs. None when
    the shadow cannot run the model (an op outside its table); that only matters, and is only
    raised, when training was asked for.
    """
    try:
        shadow = ShadowModel(model).eval()
    except UnsupportedModelError:
        return None
    if val is not None and len(val):
        x = next(val.batches(min(len(val), 64)))[0]
        feeds = {shadow.input_names[0]: x.numpy()}
    else:
        feeds = modelio.random_inputs(model, batch=4)
    expected = modelio.run(model, feeds)
    with torch.no_grad():
        got = shadow(*(torch.from_numpy(v) for v in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    return float(max(np.abs(e - g.numpy()).max() for e, g in zip(expected, got, strict=True)))

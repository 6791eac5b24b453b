"""Verification: every check that a written model behaves, in one place.

Three checks, each raising :class:`~onnxprune.errors.VerificationError` with one line:

* :func:`check_model`: the full ONNX checker passes and onnxruntime opens the model;
* :func:`check_runs`: on the same seeded input, the pruned model's outputs keep the original's
  shapes and are finite wherever the original's are;
* :func:`shadow_parity`: how far the shadow (what retraining trains) is from onnxruntime on the
  written model, for the report (the design's first invariant, measured on the user's model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
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


def check_runs(before: onnx.ModelProto, after: onnx.ModelProto, *,
               dims: Mapping[str, Sequence[int]] | None = None) -> None:
    """Run both models on one seeded input and compare what must not change.

    ``dims`` gives the input sizes after the batch for models with symbolic inputs.

    ``after``'s outputs keep their shapes, and stay finite where ``before``'s are all finite
    (a model whose own output holds NaN, a Log of negatives say, may move them), and
    ``after``'s weights are finite when ``before``'s are (training can diverge).
    """
    feeds = modelio.random_inputs(before if dims is None
                                  else modelio.with_input_dims(before, dims), batch=2)
    names = [name for name, _, _ in modelio.output_specs(after)]
    expected = modelio.run(before, feeds)
    try:
        got = modelio.run(after, feeds)
    except UnsupportedModelError as e:  # it ran before, so the prune broke it
        raise VerificationError(f"the pruned model fails in onnxruntime ({e})") from e
    for name, a, b in zip(names, expected, got, strict=True):
        if a.shape != b.shape:
            raise VerificationError(f"the pruned model's output '{name}' has shape {b.shape} "
                                    f"where the original's has {a.shape}")
        if np.isfinite(a).all() and not np.isfinite(b).all():
            raise VerificationError(f"the pruned model's output '{name}' has "
                                    f"{int((~np.isfinite(b)).sum())} NaN or infinite values "
                                    "where the original's are all finite")
    if _nonfinite_weights(before) == 0 and _nonfinite_weights(after) > 0:
        raise VerificationError(f"the pruned model has {_nonfinite_weights(after)} NaN or "
                                "infinite weights (did training diverge? try a lower --lr)")


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


def _nonfinite_weights(model: onnx.ModelProto) -> int:
    """How many values of ``model``'s float initializers are NaN or infinite."""
    return sum(int((~np.isfinite(t.values)).sum())
               for t in modelio.to_graph(model).tensors().values()
               if isinstance(t, gs.Constant) and np.asarray(t.values).dtype.kind == "f")

"""Taylor importance: the first-order output change of removing each channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT, groups_of, normalized

from onnxprune import methods, modelio
from onnxprune.errors import UsageError
from onnxprune.methods.budget import Budget
from onnxprune.methods.taylor import taylor_scores
from onnxprune.training.data import Dataset

DIGITS = np.load(ROOT / "sample_models" / "digits.npz")["x"]


def _batches(x: np.ndarray, size: int = 32):
    def batches():
        for start in range(0, len(x), size):
            yield torch.from_numpy(x[start:start + size])
    return batches


@pytest.mark.parametrize("name", ["vgg_bn", "resnet", "mobilenetv2"])
def test_one_finite_score_per_channel_averaging_one(name: str) -> None:
    model = normalized(ROOT / "sample_models" / f"{name}.onnx")
    groups = groups_of(model)
    scores = taylor_scores(model, groups, _batches(DIGITS[:64]))
    assert set(scores) == {g.id for g in groups if not g.blocked}
    for g in groups:
        if not g.blocked:
            s = scores[g.id]
            assert s.shape == (g.size,) and np.isfinite(s).all() and (s >= 0).all()
            assert s.mean() == pytest.approx(1.0)


def _with_channel(model, group, channel: int, scale: float):
    """``model`` with ``channel``'s producer weights (not biases) times ``scale``."""
    values = {}
    tensors = modelio.to_graph(model).tensors()
    for s in group.producers:
        if not s.bias:
            w = np.moveaxis(np.array(tensors[s.initializer].values), s.axis, 0)
            w[s.positions(np.array([channel]))] *= scale
            values[s.initializer] = np.moveaxis(w, 0, s.axis)
    return modelio.with_initializers(model, values)


def test_a_channel_with_zero_producer_weights_scores_lowest() -> None:
    model = normalized(ROOT / "sample_models" / "vgg_bn.onnx")
    groups = groups_of(model)
    for g in (g for g in groups if not g.blocked):
        scores = taylor_scores(_with_channel(model, g, 3, 0.0), groups, _batches(DIGITS[:64]))
        assert scores[g.id][3] == scores[g.id].min() < 1e-9  # float32 rounding of a - mu


def test_a_channel_that_moves_the_outputs_more_scores_higher() -> None:
    """Scaling one channel's producer up (nothing saturates after it) scales its change."""
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    groups = groups_of(model)
    g = next(g for g in groups if not g.blocked)
    before = taylor_scores(model, groups, _batches(DIGITS[:128]))[g.id]
    after = taylor_scores(_with_channel(model, g, 2, 20.0), groups,
                          _batches(DIGITS[:128]))[g.id]
    assert after[2] > before[2] and after[2] == after.max()


def test_taylor_needs_data_and_the_log_names_it() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")

    def context(data):
        return methods.Context(modelio.to_graph(model), tuple(groups_of(model)),
                               Budget(max_flops=0.6), 1, {"importance": "taylor"}, data,
                               model=model)
    with pytest.raises(UsageError, match="--importance taylor read calibration inputs"):
        methods.create("magnitude").run(context(None))
    plan = methods.create("magnitude").run(context(Dataset(DIGITS[:64])))
    assert plan.log["oneshot"]["importance"] == "taylor"

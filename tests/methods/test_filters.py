"""Filters: the one map from channel groups to rows of a shadow's weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import groups_of, normalized, random_plan, zeroed

from onnxprune.analysis.groups import ChannelGroup, Slice
from onnxprune.methods.filters import Filters
from onnxprune.shadow import ShadowModel


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_zero_exactly_the_removed_filters(sample: Path, seed: int) -> None:
    """Masking a shadow through Filters equals zeroing the plan's producer weights."""
    model = normalized(sample)
    groups = groups_of(model)
    plan = random_plan(groups, seed)
    filters = Filters(groups)
    shadow = ShadowModel(model)
    values = {n: shadow.masked(n) for n in filters.names()}
    keep = {gid: torch.from_numpy(np.isin(np.arange(g.size), plan.kept(g)))
            for gid, g in filters.groups.items()}
    for name, mask in filters.masks(values, keep).items():
        shadow.set_mask(name, mask)
    got, expected = _initializers(shadow.export()), _initializers(zeroed(model, plan,
                                                                          biases=False))
    for name in filters.names():
        np.testing.assert_array_equal(got[name], expected[name])
    with torch.no_grad():
        alive = filters.alive({n: shadow.masked(n) for n in filters.names()})
    assert filters.plan(alive).keep == {gid: plan.keep[gid] for gid in filters.groups}


def test_rows_follow_offsets_and_strides() -> None:
    """A weight split between two groups, and a group whose channels span two positions."""
    w = torch.arange(24.0).reshape(6, 4)
    groups = [ChannelGroup("a", 2, (Slice("w", "n", 0, offset=0),)),
              ChannelGroup("b", 2, (Slice("w", "n", 0, offset=2, stride=2),)),
              ChannelGroup("blocked", 2, (Slice("w", "n", 1),), blocked="an output")]
    filters = Filters(groups)
    assert list(filters.groups) == ["a", "b"]
    a, b = filters.rows({"w": w}, "a")[0], filters.rows({"w": w}, "b")[0]
    assert torch.equal(a, w[:2]) and torch.equal(b, w[2:].reshape(2, 8))
    masks = filters.masks({"w": w}, {"b": torch.tensor([True, False])})
    assert masks["w"][:4].eq(1).all() and masks["w"][4:].eq(0).all()
    scores = filters.scores({"w": w}, "b")
    assert torch.allclose(scores, b.sum(1).double() / b.sum(1).double().mean())

"""Fidelity per output: the numbers against a hand computation, streaming, and the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ROOT, normalized
from torch import nn

from onnxprune.fidelity import Tally, fidelity
from onnxprune.report import RANDOM_SAMPLES, report_fidelity
from onnxprune.shadow import ShadowModel
from onnxprune.training.data import Dataset
from onnxprune.training.prepare import Prepared

LENET = ROOT / "sample_models" / "lenet5.onnx"


class TwoHeads(nn.Module):
    """x (N, 4) -> a classifier (N, 3) and a map (N, 1, 2, 2), both fixed functions of x."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.classes = nn.Parameter(torch.randn(4, 3, generator=g))
        self.map = nn.Parameter(torch.randn(4, 4, generator=g))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.classes, (x @ self.map).reshape(-1, 1, 2, 2)


def _by_hand(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The definitions, sample by sample, with nothing shared with the module."""
    cosines, diff, ref = [], 0.0, 0.0
    for ai, bi in zip(a.reshape(len(a), -1).astype(np.float64),
                      b.reshape(len(b), -1).astype(np.float64), strict=True):
        cosines.append(float(ai @ bi) / math.sqrt(float(ai @ ai) * float(bi @ bi)))
        diff += float((ai - bi) @ (ai - bi))
        ref += float(bi @ bi)
    found = {"cosine": sum(cosines) / len(cosines), "rel_l2": math.sqrt(diff / ref)}
    if a.ndim == 2:
        found["agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
    return found


def test_numbers_match_a_hand_computation_over_uneven_batches() -> None:
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    model, reference = TwoHeads(1), TwoHeads(2)
    with torch.no_grad():
        model.classes.copy_(reference.classes + 0.3 * model.classes)  # mostly agrees
    found = fidelity({"m": model}, reference, Dataset(x), batch_size=3)["m"]
    with torch.no_grad():
        got, want = model(torch.from_numpy(x)), reference(torch.from_numpy(x))
    for name, a, b in zip(["output_0", "output_1"], got, want, strict=True):
        expected = _by_hand(a.numpy(), b.numpy())
        assert found[name] == pytest.approx(expected, rel=1e-6, abs=1e-9), name
    assert "agreement" in found["output_0"] and "agreement" not in found["output_1"]
    assert 0 < found["output_0"]["agreement"] < 1  # a real count, not a trivial one


def test_tally_edge_cases() -> None:
    zeros = np.zeros((2, 3))
    tally = Tally()
    tally.add(zeros, zeros)
    assert tally.result() == {"cosine": 1.0, "rel_l2": 0.0, "agreement": 1.0}
    tally = Tally()
    tally.add(np.ones((2, 1, 3)), zeros.reshape(2, 1, 3))
    assert tally.result() == {"cosine": 0.0, "rel_l2": math.inf}
    tally = Tally()
    tally.add(-np.ones((2, 4)), np.ones((2, 4)))
    assert tally.result()["cosine"] == pytest.approx(-1.0)
    assert tally.result()["rel_l2"] == pytest.approx(2.0)
    tally = Tally()
    tally.add(np.ones((2, 3)), np.ones((2, 4)))
    assert "shapes differ" in tally.result()["mismatch"]


def test_identical_models_on_random_inputs() -> None:
    model = normalized(LENET)
    found = fidelity({"same": model, "shadow": ShadowModel(model).eval()}, model, None,
                     batch_size=5, random_samples=12)
    assert found["same"] == {"logits": {"cosine": pytest.approx(1.0, abs=1e-12),
                                        "rel_l2": 0.0, "agreement": 1.0}}
    shadow = found["shadow"]["logits"]  # the shadow in torch: the same up to rounding
    assert shadow["cosine"] == pytest.approx(1.0, abs=1e-6) and shadow["rel_l2"] < 1e-5
    assert shadow["agreement"] == 1.0


def test_report_fidelity_before_and_after_finetuning() -> None:
    model = normalized(LENET)
    shadow = ShadowModel(model)
    with torch.no_grad():
        for name in shadow.initializer_names():
            shadow.parameter(name).mul_(0.9)
    changed = shadow.export()
    x = np.load(ROOT / "sample_models" / "digits.npz")["x"][:40]
    val = Dataset(x, None)
    report = report_fidelity(model, changed, model, Prepared(None, val), finetuned=True)
    assert report["inputs"] == "validation" and report["samples"] == 40
    assert report["after_prune"]["logits"]["rel_l2"] == 0.0
    after = report["after_finetune"]["logits"]
    assert 0 < after["rel_l2"] < 1 and 0.5 < after["cosine"] < 1
    without_data = report_fidelity(model, changed, None, Prepared(None, None), finetuned=False)
    assert without_data["inputs"] == "random" and without_data["samples"] == RANDOM_SAMPLES
    assert without_data["after_finetune"] is None
    assert set(without_data["after_prune"]["logits"]) == {"cosine", "rel_l2", "agreement"}
    synthetic = report_fidelity(model, changed, None, Prepared(val, val, synthetic=True),
                                finetuned=True)
    assert synthetic["inputs"] == "random" and synthetic["after_prune"] is None

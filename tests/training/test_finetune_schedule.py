"""Fine-tuning with labels decays the learning rate along a cosine; distillation does not."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

import onnxprune
from onnxprune.training import finetune as finetune_module
from onnxprune.training.finetune import finetune_config
from onnxprune.training.loop import TrainConfig

DIGITS = ROOT / "sample_models" / "digits.npz"
LENET = ROOT / "sample_models" / "lenet5.onnx"


def test_finetune_config_decays_with_labels_only() -> None:
    config = TrainConfig(epochs=3, lr=0.05)
    assert finetune_config(config, labelled=True).cosine
    assert finetune_config(config, labelled=True).lr == 0.05
    assert finetune_config(config, labelled=False) == config
    cosine = TrainConfig(cosine=True)
    assert finetune_config(cosine, labelled=False).cosine


@pytest.mark.parametrize("labelled", [True, False])
def test_prune_finetunes_with_the_schedule(monkeypatch: pytest.MonkeyPatch,
                                           labelled: bool) -> None:
    seen: list[TrainConfig] = []
    real = finetune_module.train

    def spy(model, data, config, **kwargs):
        seen.append(config)
        return real(model, data, config, **kwargs)

    monkeypatch.setattr(finetune_module, "train", spy)
    digits = np.load(DIGITS)
    data = (digits["x"][:300], digits["y"][:300]) if labelled else digits["x"][:300]
    result = onnxprune.prune(LENET, "magnitude", max_flops=0.5, round_to=1, data=data,
                             epochs=1, quiet=True)
    assert [c.cosine for c in seen] == [labelled]
    schedule = result.report["training"]["lr_schedule"]
    assert schedule == ("cosine" if labelled else "constant")

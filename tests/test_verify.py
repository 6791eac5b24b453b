"""verify.py: the checks every written model passes, and what each one catches."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, at_size

from onnxprune import modelio, verify
from onnxprune.errors import VerificationError


def _with(model: onnx.ModelProto, name: str, change: object) -> onnx.ModelProto:
    values = {t.name: np.array(onnx.numpy_helper.to_array(t)) for t in model.graph.initializer}
    values[name] = change(values[name])
    return modelio.with_initializers(model, values)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_a_model_passes_against_itself_and_nan_weights_are_caught(path: object) -> None:
    model = at_size(modelio.load(path))
    verify.check_runs(model, model)
    assert verify.check_model(model) is model
    first = max(model.graph.initializer, key=lambda t: np.prod(t.dims)).name

    def poison(w: np.ndarray) -> np.ndarray:
        w = w.copy()
        w.reshape(-1)[0] = np.nan
        return w

    with pytest.raises(VerificationError, match="NaN or infinite"):
        verify.check_runs(model, _with(model, first, poison))


def test_a_changed_output_shape_is_named() -> None:
    model = modelio.load(next(p for p in SAMPLES if p.stem == "lenet5"))
    last = model.graph.node[-1]
    assert last.op_type == "Gemm"
    fewer = _with(_with(model, last.input[1], lambda w: w[:9]), last.input[2], lambda b: b[:9])
    del fewer.graph.output[0].type.tensor_type.shape.dim[:]
    with pytest.raises(VerificationError, match=r"output '.*' has shape \(2, 9\) where the "
                                                r"original's has \(2, 10\)"):
        verify.check_runs(model, fewer)

"""The op table: opset resolution, the spec's attributes, gradients, graphs run op by op."""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnx.defs
import onnx.numpy_helper
import onnx.parser
import pytest
import torch
from onnx import helper
from op_check import (
    rand,
    run_model,
    run_ort,
)

from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow import op_table


# -- gradients --------------------------------------------------------------------------------
def _double(*shape: int, seed: int = 0, positive: bool = False) -> torch.Tensor:
    t = torch.from_numpy(rand(*shape, seed=seed)).double()
    return (t.abs() + 0.5 if positive else t).requires_grad_()


@pytest.mark.parametrize(("op", "opset", "make", "attrs"), [
    ("Conv", 13, lambda: [_double(1, 2, 5, 5), _double(3, 2, 3, 3, seed=1), _double(3, seed=2)],
     {"pads": [0, 1, 2, 1], "strides": [2, 1]}),
    ("ConvTranspose", 13, lambda: [_double(1, 2, 3, 3), _double(2, 3, 3, 3, seed=1),
                                   _double(3, seed=2)], {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ("Gemm", 13, lambda: [_double(3, 4), _double(5, 4, seed=1), _double(5, seed=2)],
     {"transB": 1, "alpha": 0.5}),
    ("BatchNormalization", 15, lambda: [_double(2, 3, 4), _double(3, seed=1), _double(3, seed=2),
                                        _double(3, seed=3), _double(3, seed=4, positive=True)],
     {}),
    ("Clip", 13, lambda: [_double(2, 5), torch.tensor(-0.5, dtype=torch.float64),
                          torch.tensor(0.5, dtype=torch.float64)], {}),
    ("Clip", 9, lambda: [_double(2, 5)], {"min": -0.5, "max": 0.5}),
    ("Resize", 13, lambda: [_double(1, 2, 3, 4), None, torch.tensor([1, 1, 2, 1.5])],
     {"mode": "linear"}),
    ("Resize", 13, lambda: [_double(1, 2, 3, 4), None, torch.tensor([1, 1, 2, 1.5])],
     {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
    ("Resize", 13, lambda: [_double(1, 2, 3, 4), None, torch.tensor([1, 1, 2, 2])],
     {"mode": "nearest"}),
    ("MaxPool", 12, lambda: [_double(1, 2, 5, 5)], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}),
    ("AveragePool", 12, lambda: [_double(1, 2, 5, 5)],
     {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1], "ceil_mode": 1}),
    ("PRelu", 16, lambda: [_double(2, 3, 4), _double(3, 1, seed=1)], {}),
])
def test_gradients_reach_every_float_input(op: str, opset: int, make: object,
                                           attrs: dict) -> None:
    inputs = make()
    fn = op_table.resolve(op, opset)
    trainable = [t for t in inputs if t is not None and t.requires_grad]

    def run(*values: torch.Tensor) -> torch.Tensor:
        it = iter(values)
        return fn(*[next(it) if t is not None and t.requires_grad else t for t in inputs],
                  **attrs)

    assert torch.autograd.gradcheck(run, trainable, fast_mode=True)
    run(*trainable).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in trainable)


# -- resolve ----------------------------------------------------------------------------------
def test_resolve_picks_the_semantics_of_the_opset() -> None:
    assert op_table.resolve("Softmax", 11) is not op_table.resolve("Softmax", 13)
    assert op_table.resolve("Softmax", 12) is op_table.resolve("Softmax", 1)
    assert op_table.resolve("ReduceMean", 17) is not op_table.resolve("ReduceMean", 18)
    assert op_table.resolve("ReduceSum", 13) is op_table.resolve("ReduceSum", 21)
    assert op_table.resolve("Conv", 9, "ai.onnx") is op_table.resolve("Conv", 21)


@pytest.mark.parametrize(("op", "opset", "domain"), [
    ("NonMaxSuppression", 17, ""), ("Conv", 13, "com.microsoft"), ("Gelu", 17, ""),
    ("FusedConv", 11, "com.microsoft"),
])
def test_resolve_refuses_with_op_domain_and_opset(op: str, opset: int, domain: str) -> None:
    with pytest.raises(UnsupportedModelError) as error:
        op_table.resolve(op, opset, domain)
    message = str(error.value)
    assert f"'{op}'" in message and f"'{domain}'" in message and f"opset {opset}" in message
    assert "\n" not in message


def test_supported_lists_the_ops_the_shadow_needs() -> None:
    needed = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Pow",
              "Sqrt", "Exp", "Neg", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid",
              "HardSwish", "Tanh", "Clip", "Softmax", "LogSoftmax", "BatchNormalization",
              "InstanceNormalization", "LRN", "MaxPool", "AveragePool", "GlobalAveragePool",
              "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Concat", "Split", "Slice",
              "Squeeze", "Unsqueeze", "Gather", "Shape", "Pad", "Resize", "Upsample",
              "ReduceMean", "ReduceSum", "ReduceMax", "Dropout", "Identity", "Constant",
              "ConstantOfShape", "Sum", "Max", "Min", "Cast", "Erf", "Expand", "Tile", "Where",
              "Equal"}
    assert needed <= op_table.SUPPORTED
    for op in op_table.SUPPORTED:
        assert callable(op_table.resolve(op, 21))


def test_space_to_depth_crd_inverts_depth_to_space_crd() -> None:
    x = torch.from_numpy(rand(2, 8, 4, 6))
    y = op_table.resolve("SpaceToDepth", 28)(x, blocksize=2, mode="CRD")
    assert torch.equal(op_table.resolve("DepthToSpace", 13)(y, blocksize=2, mode="CRD"), x)


# -- the interface ----------------------------------------------------------------------------
def test_every_spec_attribute_is_a_keyword_with_the_spec_default() -> None:
    """The shadow passes a node's attributes as keywords: each must be accepted, defaults equal."""
    for op in sorted(op_table.SUPPORTED):
        for opset in range(9, onnx.defs.onnx_opset_version() + 1):
            try:
                schema, fn = onnx.defs.get_schema(op, opset), op_table.resolve(op, opset)
            except (onnx.defs.SchemaError, UnsupportedModelError):
                continue
            if not schema.attributes:
                continue
            params = inspect.signature(fn).parameters
            for name, attr in schema.attributes.items():
                assert name in params, f"{op} at opset {opset} lacks attribute {name}"
                if attr.default_value.name:
                    default = helper.get_attribute_value(attr.default_value)
                    default = default.decode() if isinstance(default, bytes) else default
                    if isinstance(default, float):
                        default = pytest.approx(default, rel=1e-6)
                    assert params[name].default == default, \
                        f"{op} at opset {opset}: {name} defaults to {params[name].default}"


def _run_nodes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Execute a graph node by node through ops.resolve, the way the shadow does."""
    opset = model.opset_import[0].version
    env: dict = {k: torch.from_numpy(v) for k, v in feeds.items()}
    env.update({t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
                for t in model.graph.initializer})
    env[""] = None
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        result = op_table.resolve(node.op_type, opset)(*[env[n] for n in node.input], **attrs)
        env.update(zip(node.output, result if isinstance(result, tuple) else (result,),
                       strict=False))
    return [env[o.name].numpy() for o in model.graph.output]


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_shape_arithmetic_chain_on_int64_tensors(opset: int) -> None:
    """Exporters compute reshape targets with Shape -> Gather -> Unsqueeze -> Concat chains."""
    unsqueeze = "Unsqueeze <axes = [0]> (n)" if opset < 13 else "Unsqueeze (n, axis0)"
    text = f"""<ir_version: 8, opset_import: ["": {opset}]>
    g (float[2,3,4,6] x) => (float[?,?] y, int64[?] tail, float[?,?,?] z) <int64 zero = {{0}},
       int64[1] axis0 = {{0}}, int64[1] minus = {{-1}}, int64 two = {{2}},
       int64[1] start = {{1}}, int64[1] end = {{3}}> {{
        s = Shape (x)
        n = Gather <axis = 0> (s, zero)
        n1 = {unsqueeze}
        target = Concat <axis = 0> (n1, minus)
        y = Reshape (x, target)
        mid = Slice (s, start, end)
        half = Div (mid, two)
        tail = Mul (half, two)
        t3 = Concat <axis = 0> (n1, half, minus)
        z = Reshape (x, t3)
    }}"""
    model = onnx.parser.parse_model(text)
    feeds = {"x": rand(2, 3, 4, 6)}
    expected = run_model(model, feeds)
    for e, g in zip(expected, _run_nodes(model, feeds), strict=True):
        assert e.dtype == g.dtype and np.array_equal(e, g)


def test_batch_normalization_with_trainable_statistics_matches_onnxruntime() -> None:
    """With grad enabled and mean/var requiring grad, BN takes its differentiable form."""
    x, scale, b, mean = (rand(2, 3, 4, 5), rand(3, seed=1), rand(3, seed=2), rand(3, seed=3))
    var = rand(3, seed=4, low=0.5)
    expected = run_ort("BatchNormalization", [x, scale, b, mean, var], {}, 15, 1)[0]
    fn = op_table.resolve("BatchNormalization", 15)
    tensors = [torch.from_numpy(a).requires_grad_() for a in (x, scale, b, mean, var)]
    got = fn(*tensors)
    assert got.grad_fn is not None
    assert np.abs(got.detach().numpy() - expected).max() <= 1e-5

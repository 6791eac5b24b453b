"""The shadow's op table: for each ONNX op type, the function computing it at each opset.

Where an op's meaning changed between opsets, each meaning is its own function and
:func:`resolve` picks the newest one in force at the model's opset. The functions live in
:mod:`~onnxprune.shadow.ops_math` (elementwise, activations, casts, reductions),
:mod:`~onnxprune.shadow.ops_nn` (convolutions, Gemm, pools, normalisations, Pad),
:mod:`~onnxprune.shadow.ops_resize` (Resize, Upsample) and
:mod:`~onnxprune.shadow.ops_shape` (shape and layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow import ops_math, ops_nn, ops_resize, ops_shape
from onnxprune.shadow.ops_math import Op

# op type -> ((first opset, function), ...), oldest first; resolve takes the newest in force.
_TABLE: dict[str, tuple[tuple[int, Op], ...]] = {
    "Softmax": ((1, ops_math.softmax_1), (13, ops_math.softmax)),
    "LogSoftmax": ((1, ops_math.log_softmax_1), (13, ops_math.log_softmax)),
    "Squeeze": ((1, ops_shape.squeeze_1), (13, ops_shape.squeeze)),
    "Unsqueeze": ((1, ops_shape.unsqueeze_1), (13, ops_shape.unsqueeze)),
    "Split": ((1, ops_shape.split_2), (13, ops_shape.split_)),
    "Slice": ((1, ops_shape.slice_1), (10, ops_shape.slice_)),
    "Clip": ((6, ops_math.clip_6), (11, ops_math.clip)),
    "Pad": ((2, ops_nn.pad_2), (11, ops_nn.pad)),
    "Dropout": ((1, ops_math.dropout_7), (10, ops_math.dropout_10), (12, ops_math.dropout)),
    "TopK": ((1, ops_math.topk_1), (10, ops_math.topk)),
    "Upsample": ((9, ops_resize.upsample),),
    "Resize": ((10, ops_resize.resize_10), (11, ops_resize.resize)),
    "GroupNormalization": ((18, ops_nn.group_normalization_18), (21, ops_nn.group_normalization)),
    "Gelu": ((20, ops_math.gelu),),
    "Mish": ((18, F.mish),),
    "HardSwish": ((14, F.hardswish),),
    "LayerNormalization": ((17, ops_nn.layer_normalization),),
    "CastLike": ((15, ops_math.cast_like),),
    "Trilu": ((14, ops_shape.trilu),),
    "Celu": ((12, ops_math.celu),),
    "Einsum": ((12, ops_shape.einsum),),
    "Range": ((11, ops_math.range_),),
    "CumSum": ((11, ops_math.cumsum),),
    "GatherElements": ((11, ops_shape.gather_elements),),
    "IsInf": ((10, ops_math.is_inf),),
}
_AXES_INPUT_FROM = {"ReduceSum": 13}  # the other Reduce ops take axes as an input from 18
_TABLE.update({name: tuple(zip((1, _AXES_INPUT_FROM.get(name, 18)), ops_math.reduce_ops(name),
                               strict=True)) for name in ops_math.REDUCERS})

_ALWAYS: dict[str, Op] = {
    "Conv": ops_nn.conv, "ConvTranspose": ops_nn.conv_transpose, "Gemm": ops_nn.gemm,
    "MatMul": torch.matmul, "MaxPool": ops_nn.max_pool, "AveragePool": ops_nn.average_pool,
    "GlobalAveragePool": ops_nn.global_average_pool, "GlobalMaxPool": ops_nn.global_max_pool,
    "BatchNormalization": ops_nn.batch_normalization,
    "InstanceNormalization": ops_nn.instance_normalization, "LRN": ops_nn.lrn,
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": ops_math.div,
    "Pow": ops_math.pow_, "Mod": ops_math.mod,
    "Sum": ops_math.sum_, "Mean": ops_math.mean, "Max": ops_math.max_, "Min": ops_math.min_,
    "Abs": torch.abs, "Neg": torch.neg, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
    "Round": torch.round, "Sign": torch.sign, "Erf": torch.erf, "Sin": torch.sin,
    "Cos": torch.cos, "IsNaN": torch.isnan,
    "Relu": torch.relu, "LeakyRelu": ops_math.leaky_relu, "PRelu": ops_math.prelu,
    "Sigmoid": torch.sigmoid, "HardSigmoid": ops_math.hard_sigmoid, "Tanh": torch.tanh,
    "Elu": ops_math.elu, "Selu": ops_math.selu,
    "Softplus": F.softplus, "Softsign": F.softsign, "ThresholdedRelu": ops_math.thresholded_relu,
    "Shrink": ops_math.shrink,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "Not": torch.logical_not, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor, "Where": torch.where,
    "Identity": ops_math.identity, "Cast": ops_math.cast, "Constant": ops_math.constant,
    "ConstantOfShape": ops_math.constant_of_shape, "Shape": ops_math.shape, "Size": ops_math.size,
    "Reshape": ops_shape.reshape, "Flatten": ops_shape.flatten,
    "Transpose": ops_shape.transpose, "Concat": ops_shape.concat, "Gather": ops_shape.gather,
    "Expand": ops_shape.expand, "Tile": ops_shape.tile, "NonZero": ops_shape.non_zero,
    "DepthToSpace": ops_shape.depth_to_space, "SpaceToDepth": ops_shape.space_to_depth,
    "ArgMax": ops_math.argmax, "ArgMin": ops_math.argmin,
}
_TABLE.update({name: ((1, fn),) for name, fn in _ALWAYS.items()})

SUPPORTED: frozenset[str] = frozenset(_TABLE)


def resolve(op_type: str, opset: int, domain: str = "") -> Op:
    """The function computing ``op_type`` at ``opset``; raises UnsupportedModelError if none."""
    versions = _TABLE.get(op_type, ()) if domain in ("", "ai.onnx") else ()
    chosen = [fn for since, fn in versions if since <= opset]
    if not chosen:
        raise UnsupportedModelError(f"op '{op_type}' (domain '{domain}', opset {opset}) is not "
                                    "supported by the shadow model")
    return chosen[-1]

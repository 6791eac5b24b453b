"""The run report: one dict, the same that ``--report`` writes as JSON and ``PruneResult`` holds.

It says what was asked (method, options, data), what the model was and became (parameters,
FLOPs, bytes, non-zero weights; accuracy or agreement on the validation data), what the method
logged (stages, rounds), how fine-tuning went, the shadow's parity with onnxruntime on the
written model, and which channel groups were pruned or blocked and why.

``fidelity`` compares every graph output with the original model's (cosine similarity,
relative L2 error, top-1 agreement for classifiers; see :mod:`onnxprune.fidelity`) after
pruning and after fine-tuning, on the validation data, or on seeded random inputs when there
is none or it is synthetic (``"inputs": "random"``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import onnx

from onnxprune import metrics, modelio, sparse, verify
from onnxprune.analysis.groups import ChannelGroup
from onnxprune.fidelity import fidelity
from onnxprune.modelio import UPGRADED_FROM
from onnxprune.plan import Plan
from onnxprune.training.finetune import quality
from onnxprune.training.prepare import Prepared

RANDOM_SAMPLES = 32  # seeded random inputs that measure fidelity when there is no data


def source_name(source: Any) -> str:
    """How reports and errors name a model or data source: its path, else its type."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    return f"<{type(source).__name__}>"


def build_report(*, method: str, source: modelio.ModelLike, options: dict[str, Any],
                 prepared: Prepared, normalized: onnx.ModelProto, pruned: onnx.ModelProto,
                 written: onnx.ModelProto, plan: Plan, groups: tuple[ChannelGroup, ...],
                 training: dict[str, Any] | None,
                 untrained: onnx.ModelProto | None = None) -> dict[str, Any]:
    """The report of one prune of ``source`` (normalised to ``normalized``) into ``pruned``.

    ``normalized`` and ``pruned`` are at the size the run measured them at; ``written`` is
    ``pruned`` as it is written (with the input's symbolic sizes, if it had them).
    ``untrained`` is the pruned model before fine-tuning (when ``training`` says it ran);
    without it the fidelity after pruning alone is None.
    """
    return {
        "method": method,
        "input": source_name(source),
        "output": None,
        "options": options,
        "input_shapes": _shapes(normalized),  # the shapes FLOPs were counted and checked at
        "written_input_shapes": _shapes(written),
        "opset": {"input": int(upgraded) if (upgraded := _meta(normalized, UPGRADED_FROM))
                  else modelio.opset_version(normalized),
                  "output": modelio.opset_version(written)},
        "data": prepared.describe(),
        "warnings": prepared.warnings,
        "before": {**summary(normalized, source),
                   **quality(normalized, normalized, prepared.val)},
        "after": {**summary(pruned), **quality(pruned, normalized, prepared.val)},
        **plan.log,
        "training": training,
        "fidelity": report_fidelity(normalized, pruned, untrained, prepared,
                                    finetuned=training is not None),
        "parity_max_abs_diff": verify.shadow_parity(pruned, prepared.val),
        "storage": storage(written),
        "groups": {"total": len(groups), "pruned": sum(plan.removed(g).size > 0 for g in groups),
                   "blocked": sum(g.blocked is not None for g in groups)},
        "blocked": [{"group": g.id, "reason": g.blocked} for g in groups if g.blocked],
        "plan": {gid: len(kept) for gid, kept in plan.keep.items()},
    }


def report_fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto,
                    untrained: onnx.ModelProto | None, prepared: Prepared, *,
                    finetuned: bool) -> dict[str, Any]:
    """The report's ``fidelity``: each output of the pruned model against ``original``.

    ``after_prune`` is ``pruned`` itself when there was no fine-tuning, else ``untrained``
    (None when not given); ``after_finetune`` is ``pruned`` after fine-tuning, else None.
    """
    models = {"after_finetune": pruned} if finetuned else {"after_prune": pruned}
    if finetuned and untrained is not None:
        models["after_prune"] = untrained
    val = prepared.val if prepared.val is not None and len(prepared.val) else None
    found = fidelity(models, original, val, random_samples=RANDOM_SAMPLES)
    return {"inputs": "random" if val is None or prepared.synthetic else "validation",
            "samples": len(val) if val is not None else RANDOM_SAMPLES,
            "after_prune": found.get("after_prune"),
            "after_finetune": found.get("after_finetune")}


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    return {name: shape for name, shape, _ in modelio.input_specs(model)}


def _meta(model: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == key), None)


def summary(model: onnx.ModelProto, source: modelio.ModelLike | None = None) -> dict[str, Any]:
    """Parameters, FLOPs, bytes and non-zero weights of ``model``.

    Bytes are the file's size when ``source`` is a path, else the serialised size (with sparse
    weights stored sparsely, as ``save`` writes them). ``model`` has fixed input sizes; sizes
    that shape inference cannot follow are observed in one run.
    """
    graph = modelio.to_graph(modelio.observe_shapes(model))
    params, flops = metrics.count(graph)
    if isinstance(source, (str, os.PathLike)):
        size = metrics.file_bytes(source)
    else:
        size = metrics.model_bytes(source if isinstance(source, onnx.ModelProto)
                                   else sparse.store(model))
    return {"params": params, "flops": flops, "bytes": size,
            "nonzero_weights": metrics.nonzero_weights(graph)}


def storage(model: onnx.ModelProto) -> dict[str, Any]:
    """The report's ``storage``: how the written ``model`` stores its weights.

    Initializers per format (see :func:`onnxprune.sparse.store`), and the bytes per kept
    (non-zero) weight of those not stored densely: None when there are none.
    """
    stored = sparse.describe(model)
    packed = [s for s in stored if s.format != sparse.DENSE]
    kept = sum(s.kept for s in packed)
    return {"formats": {f: sum(s.format == f for s in stored)
                        for f in sparse.FORMATS},
            "bytes_per_kept_weight": sum(s.nbytes for s in packed) / kept if kept else None}


def to_json(data: Any) -> str:
    """``data`` as strict JSON: NaN and infinities (which JSON lacks) become null."""
    return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value

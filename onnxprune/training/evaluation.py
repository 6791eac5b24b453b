"""Scoring a model on data: accuracy with labels, agreement with a reference without.

Evaluation streams: it runs the data in batches and keeps counts, never all the outputs.
Under ``torchrun`` every process scores its own share of the data
(:func:`onnxprune.training.distributed.share`) and the counts are summed over the processes,
so every process gets the score of the whole data in a fraction of the time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from torch import nn

from onnxprune.errors import UsageError
from onnxprune.fidelity import Runner, runner
from onnxprune.training import distributed
from onnxprune.training.data import Dataset


def evaluate(model: nn.Module | onnx.ModelProto, data: Dataset, *,
             reference: nn.Module | onnx.ModelProto | None = None, batch_size: int = 256,
             provider: str = "CPUExecutionProvider") -> dict[str, float]:
    """Score ``model`` on ``data``, one batch in memory at a time.

    Labelled data and no reference: top-1 accuracy (and top-5 over more than 5 classes).
    Otherwise agreement with ``reference``: top-1 match and the max abs output difference.
    ONNX models run in onnxruntime on ``provider``.
    """
    for module in (model, reference):
        if isinstance(module, nn.Module):
            module.eval()
    share = distributed.share(data)
    if not data.labelled or reference is not None:
        if reference is None:
            raise UsageError("unlabelled data: give a reference model to compare with")
        return _agreement(runner(model, provider), runner(reference, provider), share,
                          batch_size)
    return _accuracy(runner(model, provider), share, batch_size)


def _accuracy(model: Runner, data: Dataset, batch_size: int) -> dict[str, float]:
    """Top-1 (and top-5 over more than 5 classes) accuracy of the first output's scores."""
    assert data.y is not None
    top1 = top5 = seen = classes = 0
    for out in _first_outputs(model, data, batch_size):
        y = data.y[seen:seen + len(out)]
        classes = out.shape[1]
        top1 += int((out.argmax(1) == y).sum())
        top5 += int((np.argsort(-out, axis=1)[:, :5] == y[:, None]).any(1).sum())
        seen += len(out)
    top1, top5, seen = distributed.total(top1, top5, seen)
    result = {"accuracy": top1 / max(seen, 1)}
    if distributed.maximum(classes) > 5:
        result["top5"] = top5 / max(seen, 1)
    return result


def _agreement(model: Runner, reference: Runner, data: Dataset,
               batch_size: int) -> dict[str, float]:
    """Top-1 match with ``reference`` (classifiers) and the max abs output difference."""
    agreed, error, seen, classifier = 0, 0.0, 0, 0
    for out, ref in zip(_first_outputs(model, data, batch_size),
                        _first_outputs(reference, data, batch_size), strict=True):
        if out.ndim == 2 and out.shape[1] > 1:
            classifier = 1
            agreed += int((out.argmax(1) == ref.argmax(1)).sum())
        error = max(error, float(np.abs(out - ref).max()) if out.size else 0.0)
        seen += len(out)
    agreed, seen, classifier = distributed.total(agreed, seen, classifier)
    result = {"agreement": agreed / max(seen, 1)} if classifier else {}
    return {**result, "output_error": distributed.maximum(error)}


def _first_outputs(run: Runner, data: Dataset, batch_size: int) -> Iterator[np.ndarray]:
    """The first output of ``run`` on ``data``, batch by batch, in order."""
    for x, _ in data.batches(batch_size):
        yield run([x.numpy()])[0]

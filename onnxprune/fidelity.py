"""Fidelity: how closely a model's outputs follow a reference model's, output by output.

Over N samples, with ``a_i`` the model's output for sample i and ``b_i`` the reference's, both
flattened:

    cosine    = 1/N sum_i <a_i, b_i> / (||a_i|| ||b_i||)   (two zero vectors: 1; one zero: 0)
    rel_l2    = sqrt(sum_i ||a_i - b_i||^2) / sqrt(sum_i ||b_i||^2)
    agreement = 1/N sum_i [argmax a_i == argmax b_i]       (2-D outputs (N, C > 1) only)

Each is a sum over samples, so a :class:`Tally` accumulates it batch by batch: memory holds one
batch of outputs whatever N is. ``rel_l2`` against an all-zero reference is 0 when the model
is zero too, else infinite (the JSON report writes null).

:func:`fidelity` scores several models against one reference in one pass over the inputs,
the reference run once per batch; models are ONNX (run in onnxruntime) or torch modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from onnxprune import modelio
from onnxprune.training.data import Dataset

Model = onnx.ModelProto | nn.Module
Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass
class Tally:
    """Running sums for one output; :meth:`result` turns them into the fidelity numbers."""

    samples: int = 0
    cosine_sum: float = 0.0
    diff_sq: float = 0.0
    ref_sq: float = 0.0
    agreed: int | None = None  # counted only for 2-D outputs with several classes
    mismatch: str | None = None  # why the output cannot be compared (shapes differ)

    def add(self, output: np.ndarray, reference: np.ndarray) -> None:
        """Add one batch (samples first) of the model's and the reference's output."""
        if self.mismatch is not None:
            return
        if np.shape(output) != np.shape(reference):
            self.mismatch = (f"shapes differ: {tuple(np.shape(output))} against the "
                             f"reference's {tuple(np.shape(reference))}")
            return
        a = np.atleast_1d(np.asarray(output, np.float64))
        b = np.atleast_1d(np.asarray(reference, np.float64))
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        both = norm_a * norm_b
        cosine = np.where(both > 0, (a * b).sum(1) / np.where(both > 0, both, 1.0),
                          (norm_a == norm_b).astype(np.float64))  # zero vs zero: 1, else 0
        self.samples += len(a)
        self.cosine_sum += float(np.clip(cosine, -1.0, 1.0).sum())
        self.diff_sq += float(np.square(a - b).sum())
        self.ref_sq += float(np.square(b).sum())
        if np.ndim(output) == 2 and np.shape(output)[1] > 1:
            self.agreed = (self.agreed or 0) + int((a.argmax(1) == b.argmax(1)).sum())

    def result(self) -> dict[str, Any]:
        """``cosine``, ``rel_l2`` and (classifiers) ``agreement``; the mismatch if any."""
        if self.mismatch is not None:
            return {"mismatch": self.mismatch}
        if self.samples == 0:
            return {}
        if self.ref_sq > 0:
            rel = math.sqrt(self.diff_sq / self.ref_sq)
        else:
            rel = 0.0 if self.diff_sq == 0 else math.inf
        found: dict[str, Any] = {"cosine": self.cosine_sum / self.samples, "rel_l2": rel}
        if self.agreed is not None:
            found["agreement"] = self.agreed / self.samples
        return found


def fidelity(models: Mapping[str, Model], reference: Model, val: Dataset | None, *,
             batch_size: int = 64, random_samples: int = 32,
             seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """Fidelity of each of ``models`` to ``reference``: ``{key: {output name: numbers}}``.

    Measured on ``val`` (its single input) in batches, or, when ``val`` is None, on
    ``random_samples`` seeded standard-normal inputs for every input of ``reference`` (which
    must then be an ONNX model). Outputs pair up by position and are named by the
    reference's graph output names (``output_<i>`` for a plain torch module).
    """
    reference_run = runner(reference)
    runs = {key: runner(model) for key, model in models.items()}
    names = output_names(reference)
    tallies: dict[str, list[Tally]] = {key: [] for key in models}
    for feeds in input_batches(reference, val, batch_size=batch_size,
                               random_samples=random_samples, seed=seed):
        expected = reference_run(feeds)
        names = names or [f"output_{i}" for i in range(len(expected))]
        for key, run in runs.items():
            got = run(feeds)
            if len(got) != len(expected):
                raise ValueError(f"'{key}' has {len(got)} outputs, the reference "
                                 f"{len(expected)}")
            found = tallies[key] = tallies[key] or [Tally() for _ in expected]
            for tally, a, b in zip(found, got, expected, strict=True):
                tally.add(a, b)
    return {key: {name: t.result() for name, t in zip(names, found, strict=False)}
            for key, found in tallies.items()}


def input_batches(model: Model, val: Dataset | None, *, batch_size: int = 64,
                  random_samples: int = 32, seed: int = 0) -> Iterator[list[np.ndarray]]:
    """Positional input batches: ``val`` in order, else seeded random inputs of ``model``."""
    if val is not None:
        for x, _ in val.batches(batch_size):
            yield [x.numpy()]
        return
    if not isinstance(model, onnx.ModelProto):
        raise ValueError("random inputs need an ONNX model to read the input shapes from")
    for k, start in enumerate(range(0, random_samples, batch_size)):
        batch = min(batch_size, random_samples - start)
        yield list(modelio.random_inputs(model, batch=batch, seed=seed + k).values())


def runner(model: Model, provider: str = "CPUExecutionProvider") -> Runner:
    """A function from positional input arrays to ``model``'s outputs as numpy arrays.

    An ONNX model runs in onnxruntime on ``provider`` (with its graph optimisations, as a
    user runs it); a torch module runs without gradients on the device of its parameters, in
    whatever mode (train or eval) it is in.
    """
    if isinstance(model, onnx.ModelProto):
        session = modelio.session(model, optimize=True, providers=[provider])
        inputs = [i.name for i in session.get_inputs()]

        def run_onnx(feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
            return modelio.run_session(session, dict(zip(inputs, feeds, strict=True)))
        return run_onnx
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")

    def run_torch(feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(*(torch.from_numpy(np.ascontiguousarray(f)).to(device) for f in feeds))
        return [o.detach().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]
    return run_torch


def output_names(model: Model) -> list[str]:
    """The graph output names of an ONNX model or a shadow; [] for another module."""
    if isinstance(model, onnx.ModelProto):
        return [name for name, _, _ in modelio.output_specs(model)]
    return list(getattr(model, "output_names", ()))

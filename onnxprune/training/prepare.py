"""Which data a run trains and validates on: loaded, checked against the model, split.

With ``--data`` and no ``--val-data`` a seeded 10 % is held out for validation. Without data,
training uses synthetic inputs distilled from the original, and the report says the accuracy
was not validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxprune.training import data as datasets

SYNTHETIC_WARNING = ("no --data: training distils from the original model on synthetic inputs; "
                     "the accuracy is not validated")


@dataclass(frozen=True)
class DataOptions:
    """Where the data comes from (see :func:`onnxprune.training.data.load_data` for the forms)."""

    data: Any = None
    val_data: Any = None
    input_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class Prepared:
    """The train and validation sets of a run, and what the report should say about them."""

    train: datasets.Dataset | None
    val: datasets.Dataset | None
    synthetic: bool = False
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The report's ``data`` entry."""
        return {"train": len(self.train) if self.train is not None else 0,
                "val": len(self.val) if self.val is not None else 0,
                "labelled": bool(self.val is not None and self.val.labelled),
                "synthetic": self.synthetic}


def prepare(model: onnx.ModelProto, options: DataOptions, *, needs_training: bool) -> Prepared:
    """Load, check and split the data for ``model``; synthetic inputs when there is none.

    Without data and without training nothing is read, so a model whose inputs onnxprune
    could not train on (several inputs, integers) is still pruned.
    """
    if options.data is None and options.val_data is None and not needs_training:
        return Prepared(None, None)
    spec = datasets.input_spec(model)
    if options.data is None:
        if options.val_data is not None:
            return Prepared(None, _load(options.val_data, spec, model, options))
        train_set, val = datasets.split(datasets.synthetic(spec))
        return Prepared(train_set, val, synthetic=True, warnings=[SYNTHETIC_WARNING])
    data = _load(options.data, spec, model, options)
    if options.val_data is not None:
        return Prepared(data, _load(options.val_data, spec, model, options))
    train_set, val = datasets.split(data)
    return Prepared(train_set, val)


def _load(source: Any, spec: datasets.InputSpec, model: onnx.ModelProto,
          options: DataOptions) -> datasets.Dataset:
    data = datasets.load_data(source, spec, input_size=options.input_size, mean=options.mean,
                              std=options.std)
    datasets.check(data, spec, datasets.class_count(model))
    return data

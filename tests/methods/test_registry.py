"""The method registry: names are unique, unknown names and options are refused."""

from __future__ import annotations

import pytest
from conftest import ROOT

from onnxprune import methods
from onnxprune.errors import UsageError
from onnxprune.methods.registry import register


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("magnitude")(type("Other", (), {}))


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown method 'nope'.*magnitude"):
        methods.create("nope")


def test_unknown_option_is_refused() -> None:
    from onnxprune import prune

    with pytest.raises(UsageError, match="takes no option rho"):
        prune(ROOT / "sample_models" / "lenet5.onnx", max_flops=0.5, round_to=1, rho=3)

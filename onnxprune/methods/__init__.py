"""Pruning methods, one per module, registered by name."""

from onnxprune.methods import admm, corr, fdp, magnitude, pp
from onnxprune.methods.registry import Context, Method, create, names, register

__all__ = ["Context", "Method", "admm", "corr", "create", "fdp", "magnitude", "names", "pp",
           "register"]

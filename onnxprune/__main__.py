"""``python -m onnxprune`` (and ``torchrun -m onnxprune``): the command line."""

from onnxprune.cli import run

run()

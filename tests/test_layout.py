"""The house rules of the source tree: small files, no import circle, the promised public API."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, SAMPLES, at_size

import onnxprune
from onnxprune import modelio

MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name (passes/ is onnxprune.passes)."""
    found = {}
    for top, prefix in ((ROOT / "onnxprune", "onnxprune"), (ROOT / "passes", "onnxprune.passes")):
        for path in top.rglob("*.py"):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    return {t for t in targets if t in modules and t != name}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_that_imports_it_back() -> None:
    modules = _modules()
    edges = {name: _imports(path, name, modules) for name, path in modules.items()}
    assert len(modules) > 30 and sum(map(len, edges.values())) > 60  # the walk sees the tree
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_source_file_passes_the_line_ceiling() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in _modules().values()}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_package_level_shadow_load_and_save(path: Path, tmp_path: Path) -> None:
    shadow = onnxprune.ShadowModel(onnx.load(path)).eval()
    model = onnxprune.load(path)
    feeds = modelio.random_inputs(at_size(model), batch=2)
    with torch.no_grad():
        got = shadow(*(torch.from_numpy(v) for v in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(modelio.run(model, feeds), got, strict=True):
        assert np.abs(e - g.numpy()).max() <= 1e-4
    out = tmp_path / "copy.onnx"
    assert onnxprune.save(model, out) == out.stat().st_size
    assert onnx.load(out).graph == model.graph

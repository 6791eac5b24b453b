"""The ``onnxprune`` command: parsing and printing only; the work is in :mod:`onnxprune.api`.

``onnxprune IN --method M --out OUT`` prunes (no subcommand word needed); ``inspect`` and
``bench`` are subcommands. A model file named like a subcommand is reached as ``./inspect``.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
from onnx_graphsurgeon.logger import G_LOGGER

from onnxprune import api, methods, modelio, plot, report
from onnxprune.errors import BudgetError, OnnxPruneError, UsageError
from onnxprune.methods.corr import CorrOptions
from onnxprune.methods.correlation import TERMS
from onnxprune.methods.fdp import FdpOptions
from onnxprune.methods.magnitude import ALLOCATIONS, IMPORTANCES, MagnitudeOptions
from onnxprune.methods.pp import BUDGET_STRENGTH, TOLERANCE_STRENGTH, PpOptions
from onnxprune.methods.rounds import DEFAULT_TOLERANCE
from onnxprune.training import distributed


class _DefaultToPrune(click.Group):
    """A group whose first argument is a model path unless it names a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                     "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxprune")
def main() -> None:
    """Prune an ONNX model into a smaller, faster ONNX model.

    \b
      onnxprune IN.onnx --method magnitude --max-flops 0.5 --out SMALL.onnx
      onnxprune inspect IN.onnx [--json]
      onnxprune bench IN.onnx SMALL.onnx
    """  # noqa: D301


_MARGIN = ("standard errors of the validation drop (from the samples whose prediction "
           "changed) forgiven before the tolerance counts as exceeded")
_PP_OPTIONS = (
    ("candidates", float, "fraction of each layer's live filters put under the L1 term per "
                          "round"),
    ("strength", float, f"L1 strength at full tolerance (default {TOLERANCE_STRENGTH} to a "
                        f"tolerance, {BUDGET_STRENGTH} to a budget); 1 wears a mean weight to "
                        "zero in one round"),
    ("threshold", float, "a candidate goes when its L1 norm falls below this fraction of its "
                         "layer's mean, at full tolerance"),
    ("epochs_per_round", click.IntRange(min=1), "training epochs per round"),
    ("rounds", click.IntRange(min=1), "at most this many rounds"),
    ("budget_rounds", click.IntRange(min=1), "reach a FLOPs or parameter budget in this "
                                             "many rounds"),
    ("margin", float, _MARGIN),
)
_CORR_OPTIONS = (
    ("pairs", float, "filter pairs per group and round, each losing one filter: a fraction "
                     "of the group's live filters (below 1) or a count"),
    ("strength", float, "weight of the correlation term"),
    ("term", click.Choice(TERMS), "the correlation term: linear sum(1 - |corr|) or "
                                  "exp(-sum |corr|)"),
    ("epochs_per_round", click.IntRange(min=1), "training epochs with the term per round"),
    ("finetune_epochs", click.IntRange(min=0), "fine-tuning epochs after each round's drop"),
    ("rounds", click.IntRange(min=1), "at most this many rounds"),
    ("margin", float, _MARGIN),
)
_ROUND_OPTIONS = (("pp", PpOptions(), _PP_OPTIONS), ("corr", CorrOptions(), _CORR_OPTIONS))
_METHOD_OPTIONS = ("sparsity", "granularity", "layer_sparsity", "tolerance", "importance",
                   "allocation", "calibration_samples", "reconstruction", "fold", "bands",
                   "band_ratio", "prune_epochs",
                   *dict.fromkeys(name for _, _, table in _ROUND_OPTIONS
                                  for name, _, _ in table))


def _round_options(command: Any) -> Any:
    """The options of the round-based methods, defaults read from PpOptions and CorrOptions.

    An option both take is declared once, its help giving each method's meaning and default
    (once, naming both, when they agree).
    """
    kinds: dict[str, Any] = {}
    texts: dict[str, dict[str, list[str]]] = {}
    for method, defaults, table in _ROUND_OPTIONS:
        for name, kind, text in table:
            kinds.setdefault(name, kind)
            default = getattr(defaults, name)  # None: the text says it
            said = text if default is None else f"{text} (default {default})"
            texts.setdefault(name, {}).setdefault(said, []).append(method)
    for name in reversed(list(kinds)):
        help_text = "; ".join(f"{', '.join(methods_)}: {said}"
                              for said, methods_ in texts[name].items())
        command = click.option(f"--{name.replace('_', '-')}", type=kinds[name],
                               help=help_text + ".")(command)
    return command


_PROVIDER = click.option(
    "--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
    callback=lambda _ctx, _param, value: {"cpu": "CPUExecutionProvider",
                                          "cuda": "CUDAExecutionProvider"}[value],
    help="onnxruntime's execution provider (cuda: needs onnxruntime-gpu and a GPU).")
_INPUT_SIZE = click.option(
    "--input-size", help="The size the model runs at, HxW, e.g. 320x320: a model with symbolic "
                         "H and W is analysed and measured at it (default: the size of the "
                         "--data samples), and image folders are resized to it.")


def _data_options(command: Any) -> Any:
    """The options that say where data comes from, shared by prune and eval."""
    for option in reversed([
        click.option("--data", help="Training data: X.npz (arrays x, y), an image folder "
                                    "(one subfolder per class), or module:function."),
        click.option("--val-data", help="Validation data, in the same forms (default: a "
                                        "seeded 10 % of --data)."),
        _INPUT_SIZE,
        click.option("--mean", help="Image folders: per-channel mean, e.g. 0.485,0.456,0.406."),
        click.option("--std", help="Image folders: per-channel std, e.g. 0.229,0.224,0.225."),
    ]):
        command = option(command)
    return command


def _parsed(options: dict[str, Any]) -> dict[str, Any]:
    """Turn the text forms of --input-size, --mean and --std into numbers."""
    out = dict(options)
    try:
        if out.get("input_size"):
            out["input_size"] = tuple(int(v) for v in out["input_size"].lower().split("x"))
        for key in ("mean", "std"):
            if out.get(key):
                out[key] = [float(v) for v in out[key].split(",")]
    except ValueError as e:
        raise UsageError(f"--input-size takes HxW and --mean/--std comma-separated numbers "
                         f"({e})") from e
    return out


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--method", "method", default="magnitude", show_default=True,
              help=f"Pruning method: {', '.join(methods.names())}.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Where to write the pruned model.")
@click.option("--max-flops", type=float,
              help="Fraction of the original FLOPs to keep, in (0, 1].")
@click.option("--max-params", type=float,
              help="Fraction of the original parameters to keep, in (0, 1].")
@click.option("--round-to", type=click.IntRange(min=1),
              help="Round kept channel counts to a multiple of N (default: this CPU's "
                   "onnxruntime channel block, 16 with AVX-512, else 8; 1 disables).")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Also write the report as JSON here.")
@click.option("--strict", is_flag=True,
              help="Fail (exit code 3; the report is written, the model not) when the run ends "
                   "above --max-flops / --max-params; without it such a run warns and writes "
                   "the model.")
@click.option("--sparsity", type=float,
              help="admm: fraction of weights to remove, in (0, 1); fdp: of DCT coefficients "
                   f"(default {FdpOptions().sparsity}).")
@click.option("--granularity", type=click.Choice(["weight", "filter"]),
              help="admm: prune individual weights (default) or whole filters.")
@click.option("--layer-sparsity",
              help="admm, fdp: uniform (default; first and last layers 3x denser), global "
                   "(admm: one magnitude ranking over all layers), or a JSON/YAML file "
                   "{weight name: sparsity}.")
@click.option("--bands/--no-bands", default=None,
              help="fdp: prune low DCT frequencies less than high ones (default on; off: one "
                   "rate for every band).")
@click.option("--band-ratio", type=float,
              help="fdp: density of the highest band over the lowest's, in (0, 1] (default "
                   f"{FdpOptions().band_ratio}).")
@click.option("--prune-epochs", type=click.IntRange(min=1),
              help="fdp: epochs of training with dynamic masks (default "
                   f"{FdpOptions().prune_epochs}, then {FdpOptions().retrain_epochs} with the "
                   "masks frozen).")
@click.option("--tolerance", type=float,
              help="pp, corr: accuracy points the method may lose on the validation data "
                   f"(default {DEFAULT_TOLERANCE} without a budget, none with one: the budget "
                   "is then the goal).")
@_round_options
@click.option("--fold/--no-fold", default=None,
              help="corr: fold each dropped filter into its partner's consumers (default "
                   f"{'on' if CorrOptions().fold else 'off'}).")
@click.option("--importance", type=click.Choice(list(IMPORTANCES)),
              help="magnitude: how channels are scored: taylor (first-order change of the "
                   "outputs on --data, the default with --data), l1 (weights; the default "
                   "without --data, or when --epochs fine-tune on labels) or reconstruction "
                   "(consumer-output error on --data).")
@click.option("--allocation", type=click.Choice(list(ALLOCATIONS)),
              help="magnitude: how the budget is spread over layers: sensitivity (least "
                   "output degradation per FLOP saved, measured on --data; the default with "
                   "--data) or global (one threshold on per-layer scores; the default without "
                   "--data, or when --epochs fine-tune on labels).")
@click.option("--calibration-samples", type=click.IntRange(min=1),
              help=f"magnitude: read at most N --data inputs to calibrate one-shot pruning "
                   f"(default {MagnitudeOptions().calibration_samples}).")
@click.option("--reconstruction/--no-reconstruction", default=None,
              help="magnitude: refit the layers after pruned channels on --data (default: on "
                   "with --data).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="Draw the method's stages or rounds (quality against size) into this PNG "
                   "(needs matplotlib: pip install 'onnxprune[plot]').")
@_data_options
@click.option("--epochs", default=0, show_default=True, type=click.IntRange(min=0),
              help="Fine-tune the pruned model for this many epochs.")
@click.option("--lr", type=float,
              help="SGD learning rate (default 0.05 with labels, from "
                   "benchmarks/magnitude_finetune_mnist.py; 0.0003 distilling without, from "
                   "benchmarks/distill_fidelity.py).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--train-batchnorm/--no-train-batchnorm", default=None,
              help="Fine-tune with a BatchNorm after each Conv, folded back on export "
                   "(default: on with labels, off distilling without).")
@click.option("--distill-features/--no-distill-features", default=False, show_default=True,
              help="Label-free fine-tuning also matches each channel group's kept channels "
                   "to the original's, not only the outputs.")
@click.option("--workers", type=click.IntRange(min=0),
              help="DataLoader processes reading the training batches (default: up to 4, a "
                   "core left to train, for an image folder or a mapped .npz; 0 otherwise).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path),
              help="Keep training's state after every epoch in this folder (written "
                   "atomically; a kill loses at most the epoch it interrupts).")
@click.option("--resume", is_flag=True,
              help="Continue the run whose checkpoints --checkpoint-dir holds; it ends as the "
                   "uninterrupted run would (same model, data, options and seed).")
@click.option("--amp", is_flag=True,
              help="Train in mixed precision: float16 with loss scaling on CUDA, bfloat16 on "
                   "CPU.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def prune_command(model: Path, method: str, out: Path, report_path: Path | None, quiet: bool,
                  plot_path: Path | None, **options: Any) -> None:
    """Prune MODEL and write the result to --out."""
    given = {k: v for k, v in _parsed(options).items()
             if v is not None or k not in _METHOD_OPTIONS}
    api.check_outputs(model, method, {"--out": out, "--report": report_path, "--plot": plot_path},
                      **given)
    try:
        result = api.prune(model, method, quiet=quiet, **given)
    except BudgetError as e:  # --strict: the report says why; the model is not written
        if report_path is not None and distributed.writes():
            modelio.save_text(report.to_json(e.result.report), report_path)
        raise
    result.save(out)
    if not distributed.writes():
        return  # under torchrun rank 0 writes and reports
    if report_path is not None:
        modelio.save_text(report.to_json(result.report), report_path)
    if plot_path is not None:
        plot.draw(result.report, plot_path)
    for warning in [*result.report["warnings"], *result.report.get("method_warnings", [])]:
        click.echo(f"onnxprune: warning: {warning}", err=True)
    if not quiet:
        click.echo(_before_after(result.report))


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@_INPUT_SIZE
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect_command(model: Path, as_json: bool, input_size: str | None) -> None:
    """Show per-layer parameters, FLOPs and channels, and the channel groups of MODEL."""
    info = api.inspect(model, input_size=_parsed({"input_size": input_size})["input_size"])
    data = {
        "model": str(model),
        "input_shapes": info.input_shapes,
        "params": info.params,
        "flops": info.flops,
        "prunable_flops_share": info.prunable_share,
        "layers": [vars(layer) for layer in info.layers],
        "groups": [{"id": g.id, "channels": g.size,
                    "producers": sorted({s.node for s in g.producers}),
                    "consumers": sorted({s.node for s in g.consumers}),
                    "blocked": g.blocked} for g in info.groups],
    }
    if as_json:
        click.echo(report.to_json(data), nl=False)
        return
    rows = [(lay.name, lay.op, f"{lay.params:,}", _number(lay.flops),
             f"{lay.in_channels}->{lay.out_channels}") for lay in info.layers]
    click.echo(_table(("layer", "op", "params", "FLOPs", "channels"), rows))
    shapes = ", ".join(f"{n} {tuple(s)}" for n, s in info.input_shapes.items())
    flops = (f"{info.flops:,} FLOPs (multiply-accumulates) at {shapes}" if info.flops is not None
             else f"FLOPs unknown at {shapes} (give --input-size HxW)")
    click.echo(f"total: {info.params:,} params, {flops}")
    if info.prunable_share is not None:
        click.echo(f"prunable: {info.prunable_share:.1%} of the FLOPs are in layers whose "
                   "channels can be pruned")
    click.echo()
    rows = [(g["id"], str(g["channels"]), ", ".join(g["producers"]),
             g["blocked"] or "prunable") for g in data["groups"]]
    click.echo(_table(("group", "channels", "producers", "status"), rows))


@main.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@_data_options
@click.option("--reference", type=click.Path(path_type=Path),
              help="Report agreement with this model instead of accuracy.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_PROVIDER
def eval_command(model: Path, reference: Path | None, as_json: bool, provider: str,
                 **options: Any) -> None:
    """Accuracy of MODEL on --data in onnxruntime (top-1, top-5), or agreement with --reference."""
    if options["data"] is None:
        raise UsageError(f"{model}: eval needs --data")
    scores = api.evaluate(model, reference=reference, provider=provider, **_parsed(options))
    if as_json:
        click.echo(report.to_json(scores), nl=False)
        return
    click.echo(_table(("metric", "value"), [(k, f"{v:.4f}" if isinstance(v, float) else str(v))
                                            for k, v in scores.items()]))


@main.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runs", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(min=0))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=0),
              help="onnxruntime intra-op threads (0: all cores).")
@_PROVIDER
@_INPUT_SIZE
def bench_command(models: tuple[Path, ...], runs: int, warmup: int, batch: int, threads: int,
                  provider: str, input_size: str | None) -> None:
    """Time MODELS in onnxruntime (median and p90); speedup is against the first."""
    timings = api.bench(models, batch=batch, runs=runs, warmup=warmup, threads=threads,
                        provider=provider,
                        input_size=_parsed({"input_size": input_size})["input_size"])
    base = timings[0].median_ms
    rows = [(str(m), f"{t.median_ms:.3f}", f"{t.p90_ms:.3f}", f"{base / t.median_ms:.2f}x")
            for m, t in zip(models, timings, strict=True)]
    click.echo(_table(("model", "median ms", "p90 ms", "speedup"), rows))
    click.echo(f"({runs} runs, batch {batch}, {threads or 'all'} thread(s), {provider})")


def _number(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _before_after(summary: dict[str, Any]) -> str:
    rows = []
    for key, label in (("params", "params"), ("nonzero_weights", "non-zero weights"),
                       ("flops", "FLOPs"), ("bytes", "file bytes")):
        before, after = summary["before"][key], summary["after"][key]
        rows.append((label, _number(before), _number(after),
                     f"{after / max(before, 1):.3f}" if None not in (before, after) else ""))
    g = summary["groups"]
    return (_table(("", "before", "after", "kept"), rows)
            + f"\ngroups: {g['pruned']} pruned of {g['total']} ({g['blocked']} blocked)"
            + f"\nwrote {summary['output']}")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run() -> None:
    """Entry point: run the command; print OnnxPruneError as one line and exit with its code."""
    G_LOGGER.severity = G_LOGGER.ERROR  # graphsurgeon warns on stdout, which carries our JSON
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        main(standalone_mode=False)
    except OnnxPruneError as e:  # one line, whatever a library's message held
        click.echo(f"onnxprune: error: {' '.join(str(e).split())}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)


def _exit_on_signal(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C: temporary files are removed on the way out."""
    raise SystemExit(128 + signum)

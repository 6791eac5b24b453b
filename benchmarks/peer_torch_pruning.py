"""Side by side with Torch-Pruning: onnxprune's default path against the leading torch pruner.

On the MNIST split (first 8,000 of ../shared/data/mnist to train, last 2,000 to test), for the
VGG and ResNet samples at 0.25 of the FLOPs and 3 epochs of fine-tuning:

- onnxprune's default path: ``api.prune(path, "magnitude", max_flops=0.25, data=train,
  val_data=test, epochs=3)``, everything else default (one-shot with layer reconstruction, then
  fine-tuning with re-inserted BatchNorm); "one-shot" is the same call with ``epochs=0``.
- Torch-Pruning (``pip install torch-pruning --no-deps``, the ``peer`` extra), given the torch
  source: the sample's class from ``sample_models/build.py`` with the ONNX file's weights
  (the file has BatchNorm folded into each Conv: the Conv takes the folded weight and its
  BatchNorm is calibrated on 256 training inputs, running statistics and affine undoing each
  other, so the module computes the file's function; checked against onnxruntime to 1e-4).
  Pruned as Torch-Pruning's own benchmark (benchmarks/main.py) prunes to a speed-up: a
  MagnitudePruner with group L2 importance (GroupMagnitudeImportance(p=2), formerly
  GroupNormImportance), pruning_ratio 1.0 over 400 iterative steps, the classifier ignored,
  stepped until the Conv + Linear multiply-adds (counted as onnxprune.metrics counts them) are
  at most the target; both global pruning (its benchmark scripts) and per-layer (its default).
  Then fine-tuned by onnxprune's own training loop with the options onnxprune's fine-tuning
  uses (``finetune_config``: SGD, lr 0.05 decayed along a cosine, momentum 0.9, weight decay
  5e-4, batch 64, the same shuffles, the best epoch on the test split kept, as onnxprune's
  ``val_data`` does), exported (BatchNorm folded) and measured in onnxruntime.

FLOPs kept by onnxprune.metrics on each ONNX file; speedup by onnxprune.metrics.latency against
the original (same process, interleaved, batch 32, one thread); wall seconds of each path.

    python benchmarks/peer_torch_pruning.py [--epochs 3] [--target 0.25] [--models vgg_bn resnet]
        [--scopes global local]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import mnist_split
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from onnxprune import api, metrics, modelio
from onnxprune.training.data import Dataset
from onnxprune.training.evaluation import evaluate
from onnxprune.training.finetune import finetune_config
from onnxprune.training.keep_best import KeepBest
from onnxprune.training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sample_models.build import MODELS  # noqa: E402

CALIBRATION = 256
STEPS = 400


def weighted_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, tuple]]:
    """(Conv2d or Linear, output shape) in execution order on ``x``."""
    seen: list[tuple[nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, tuple(o.shape))))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def batchnorm_after(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, nn.BatchNorm2d]:
    """Each Conv2d whose output a BatchNorm2d reads, mapped to that BatchNorm."""
    made: dict[int, nn.Module] = {}
    pairs: dict[nn.Module, nn.BatchNorm2d] = {}

    def conv_hook(m, i, o):
        made[id(o)] = m

    def bn_hook(m, i):
        if id(i[0]) in made:
            pairs[made[id(i[0])]] = m

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(bn_hook) for m in model.modules()
              if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return pairs


def torch_twin(name: str, original: onnx.ModelProto, train_set: Dataset) -> nn.Module:
    """The sample's torch class carrying the ONNX file's weights, BatchNorm calibrated."""
    model = MODELS[name]().eval()
    x0 = torch.zeros(1, 1, 28, 28)
    inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    nodes = [n for n in original.graph.node if n.op_type in ("Conv", "Gemm")]
    layers = [m for m, _ in weighted_layers(model, x0)]
    bns = batchnorm_after(model, x0)
    if len(nodes) != len(layers):
        raise SystemExit(f"{name}: {len(nodes)} Conv/Gemm in the file, {len(layers)} in torch")
    bias_of: dict[nn.Module, torch.Tensor] = {}
    with torch.no_grad():
        for node, layer in zip(nodes, layers, strict=True):
            w = torch.from_numpy(inits[node.input[1]].copy())
            b = torch.from_numpy(inits[node.input[2]].copy())
            if tuple(w.shape) != tuple(layer.weight.shape):
                raise SystemExit(f"{name}: {node.name} {tuple(w.shape)} vs "
                                 f"{tuple(layer.weight.shape)}")
            layer.weight.copy_(w)
            if layer.bias is not None:
                layer.bias.copy_(b)
            elif layer in bns:  # pass-through BatchNorm holding the folded bias for now
                bn = bns[layer]
                bn.weight.fill_(1)
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
                bn.bias.copy_(b)
                bias_of[bn] = b
            else:
                raise SystemExit(f"{name}: {node.name} has a bias and its torch layer none")
    # Statistics of each Conv output (before the bias) on the calibration inputs.
    sums: dict[nn.Module, list] = {}

    def observe(m, i, o):
        o = o.double()
        s = sums.setdefault(m, [0, 0.0, 0.0])
        s[0] += o.numel() // o.shape[1]
        s[1] = s[1] + o.sum((0, 2, 3))
        s[2] = s[2] + o.square().sum((0, 2, 3))

    hooks = [conv.register_forward_hook(observe) for conv in bns]
    left = CALIBRATION
    with torch.no_grad():
        for x, _ in train_set.batches(64, shuffle=True, seed=0):
            model(x[:left])
            left -= len(x)
            if left <= 0:
                break
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for conv, bn in bns.items():
            count, total, squares = sums[conv]
            mean = total / count
            var = (squares / count - mean.square()).clamp_min(0)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean + bias_of[bn].double())
    return model.eval()


def check_twin(model: nn.Module, original: onnx.ModelProto, x: np.ndarray) -> float:
    """Max abs difference of the module's logits from onnxruntime's on ``x``; <= 1e-4."""
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x)).numpy()
    theirs = modelio.run(original, {"input": x})[0]
    diff = float(np.abs(ours - theirs).max())
    if diff > 1e-4:
        raise SystemExit(f"torch twin differs from onnxruntime by {diff:.2e}")
    return diff


def macs(model: nn.Module) -> int:
    """Conv2d + Linear multiply-adds per sample, as onnxprune.metrics counts them."""
    return sum(m.weight.numel() * (shape[2] * shape[3] if len(shape) == 4 else 1)
               for m, shape in weighted_layers(model, torch.zeros(1, 1, 28, 28)))


def to_onnx(model: nn.Module) -> onnx.ModelProto:
    """Export in eval mode with the legacy exporter (BatchNorm folded by constant folding)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(2, 1, 28, 28),), buffer, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def flops(model: onnx.ModelProto) -> int:
    """onnxprune.metrics' FLOPs of an ONNX model."""
    return metrics.count(modelio.to_graph(modelio.infer_shapes(model)))[1]


def torch_pruning_path(name, original, train_set, test, epochs, target, global_pruning):
    """Torch-Pruning to ``target`` of the MACs, then onnxprune's fine-tuning loop."""
    import torch_pruning as tp

    start = time.perf_counter()
    model = torch_twin(name, original, train_set)
    diff = check_twin(model, original, test.x[:64])
    base = macs(model)
    pruner = tp.pruner.MagnitudePruner(
        model, torch.zeros(1, 1, 28, 28), importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=global_pruning, pruning_ratio=1.0, iterative_steps=STEPS,
        ignored_layers=[m for m in model.modules()
                        if isinstance(m, nn.Linear) and m.out_features == 10])
    steps = 0
    while macs(model) > target * base and steps < STEPS:
        pruner.step()
        steps += 1
    oneshot = evaluate(model, test)["accuracy"]
    config = finetune_config(TrainConfig(epochs=epochs, quiet=True), labelled=True)
    keeper = KeepBest(test, batch_size=config.batch_size)
    keeper.start(model)
    if epochs:
        train(model, train_set, config, hooks=[keeper])
    keeper.restore(model)
    exported = to_onnx(model)
    seconds = time.perf_counter() - start
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    return exported, {"oneshot": oneshot, "seconds": seconds, "epoch": keeper.best_epoch,
                      "twin_diff": diff, "widths": widths}


def conv_widths(model: onnx.ModelProto) -> list[int]:
    """Output channels of each Conv of an ONNX model, in graph order."""
    inits = {t.name: t.dims for t in model.graph.initializer}
    return [int(inits[n.input[1]][0]) for n in model.graph.node if n.op_type == "Conv"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--models", nargs="*", default=["vgg_bn", "resnet"])
    parser.add_argument("--scopes", nargs="*", default=["global", "local"],
                        choices=["global", "local"], help="Torch-Pruning's global_pruning or not")
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    train_set, test = mnist_split.load(args.mnist)
    print(f"MNIST split: {len(train_set)} train, {len(test)} test; {args.epochs} epochs; target "
          f"{args.target} of FLOPs")
    rows, notes = [], []
    for name in args.models:
        path = ROOT / "sample_models" / f"{name}.onnx"
        original = modelio.load(path)
        base_flops = flops(original)
        base_acc = evaluate(original, test)["accuracy"]
        oneshot = api.prune(path, "magnitude", max_flops=args.target, data=train_set,
                            val_data=test, quiet=True)
        start = time.perf_counter()
        ours = api.prune(path, "magnitude", max_flops=args.target, data=train_set,
                         val_data=test, epochs=args.epochs, quiet=True)
        ours_s = time.perf_counter() - start
        peers = {scope: torch_pruning_path(name, original, train_set, test, args.epochs,
                                           args.target, scope == "global")
                 for scope in args.scopes}
        times = metrics.latency([original, ours.model, *(p for p, _ in peers.values())],
                                batch=32, runs=30, threads=1)
        base_ms, ours_ms, peer_ms = times[0].median_ms, times[1].median_ms, times[2:]
        validation = ours.report["training"]["validation"]
        rows.append((name, "onnxprune magnitude (default)", flops(ours.model) / base_flops,
                     oneshot.report["after"]["accuracy"], evaluate(ours.model, test)["accuracy"],
                     validation["best_epoch"], base_ms / ours_ms, ours_s))
        notes.append(f"{name}: original accuracy {base_acc:.4f}; conv widths onnxprune "
                     f"{conv_widths(ours.model)}")
        for (scope, (peer, info)), latency in zip(peers.items(), peer_ms, strict=True):
            rows.append((name, f"Torch-Pruning {scope} group L2", flops(peer) / base_flops,
                         info["oneshot"], evaluate(peer, test)["accuracy"], info["epoch"],
                         base_ms / latency.median_ms, info["seconds"]))
            notes.append(f"{name}: Torch-Pruning {scope} conv widths {conv_widths(peer)}; torch "
                         f"twin matches onnxruntime to {info['twin_diff']:.1e}")
    print("| model | method | FLOPs kept | one-shot acc | fine-tuned acc | epoch kept "
          "| speedup 1t | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, method, kept, one, tuned, epoch, speedup, seconds in rows:
        print(f"| {name} | {method} | {kept:.3f} | {one:.4f} | {tuned:.4f} | {epoch} "
              f"| {speedup:.2f}x | {seconds:.0f} |")
    print("\n".join(notes))


if __name__ == "__main__":
    main()

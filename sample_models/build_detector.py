"""Build ``dbnet.onnx``: a small DBNet-style text detector trained on canvases of digits.

It stands in for a PaddleOCR DB text detector exported to ONNX (BatchNorm folded, symbolic
batch, height and width, a probability map out of a final Sigmoid). ``build.py`` calls
:func:`build_dbnet`; ``python sample_models/build.py dbnet`` builds only this file.

Data (:func:`canvases`): 64x64 canvases, each with one to four digits of ``digits.npz`` (their
20x20 content, scaled by a contrast in [0.6, 1]) pasted at random positions without overlap,
plus Gaussian noise (sigma 0.04, clipped to [0, 1]). The target is DBNet's probability map:
each digit's ink box (pixels > 0.3) shrunk by DBNet's offset ``D = A (1 - r^2) / L`` (area
``A``, perimeter ``L``, ``r = 0.4``), 1 inside and 0 elsewhere. The training canvases draw on
the 1,437 training digits of ``build.split_indices``, the held-out ones on the other 360
digits, with their own seeds.

Model (:class:`DBNet`, 128,289 parameters): a backbone of Conv-BN-ReLU stages, a stem at
stride 2 (16 channels), then C2 at stride 4 (two convs, 32), C3 at 8 (48), C4 at 16 (64) and C5
at 32 (64); a DBFPN-style neck: a bias-free 1x1 lateral conv per level to 32 channels, top-down
nearest upsampling (to the size of the level below, as mmocr's FPN writes it) and Add, a
bias-free 3x3 conv per level to 16 channels, nearest upsampling of each to the C2 size (1/4)
and Concat (64); a DB head: 3x3 Conv-BN-ReLU (16), 2x2 stride-2 ConvTranspose-BN-ReLU (16),
2x2 stride-2 ConvTranspose to 1 channel, Sigmoid. Height and width should be multiples of 32,
as DBNet asks; the map has the input's size whenever they are multiples of 4 (the tests run it
at 28x28). The widths of the layers that carry most FLOPs are multiples of 16, so that one-shot
pruning at onnxruntime's channel block (16 with AVX-512) can shrink them.

Export: the legacy TorchScript exporter at opset 17 in eval mode, so constant folding folds
each Conv's BatchNorm; the ConvTranspose's BatchNorm, which it leaves, is folded into the
ConvTranspose in torch first (``fuse_conv_bn_eval``). Every Resize reads ``sizes`` computed
at run time (``Shape -> Slice`` for batch and channels, ``Shape -> Gather -> Unsqueeze ->
Concat -> Cast`` for height and width of the level it is added or concatenated to), as
exports of FPNs with size-matched upsampling look.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

FILE = "dbnet.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "maps"
OPSET = 17
CANVAS = 64
N_TRAIN_CANVASES = 2048
N_VAL_CANVASES = 512
TRAIN_SEED, VAL_SEED = 1, 2
MODEL_SEED = 0
THRESHOLD = 0.3  # DBNet's binarisation threshold of the probability map
SHRINK_RATIO = 0.4  # DBNet's r
NUM_THREADS = 2


def canvases(x28: np.ndarray, n: int, seed: int, size: int = CANVAS,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` canvases of digits from ``x28`` and their probability-map targets.

    Args:
        x28: digits as in ``digits.npz`` (M, 1, 28, 28); their 20x20 centres are pasted.
        n: number of canvases.
        seed: seed of the placement, choice, contrast and noise.
        size: canvas height and width.

    Returns:
        ``x`` float32 (n, 1, size, size) in [0, 1] and ``maps`` float32 (n, 1, size, size) of
        0 and 1.
    """
    patches = x28[:, 0, 4:24, 4:24]
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.float32)
    maps = np.zeros_like(x)
    for i in range(n):
        boxes: list[tuple[int, int]] = []
        for _ in range(int(rng.integers(1, 5))):
            patch = patches[rng.integers(len(patches))]
            contrast = rng.uniform(0.6, 1.0)
            for _ in range(20):
                r, c = (int(v) for v in rng.integers(0, size - 20 + 1, 2))
                if all(abs(r - r0) >= 21 or abs(c - c0) >= 21 for r0, c0 in boxes):
                    break
            else:
                continue
            boxes.append((r, c))
            x[i, 0, r:r + 20, c:c + 20] = np.maximum(x[i, 0, r:r + 20, c:c + 20],
                                                     patch * contrast)
            rows, cols = np.nonzero(patch > THRESHOLD)
            if not len(rows):
                continue
            y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            h, w = y1 - y0, x1 - x0
            d = int(round(h * w * (1 - SHRINK_RATIO**2) / (2 * (h + w))))
            d = min(d, (h - 1) // 2, (w - 1) // 2)
            maps[i, 0, r + y0 + d:r + y1 - d, c + x0 + d:c + x1 - d] = 1.0
    x += rng.normal(0.0, 0.04, x.shape).astype(np.float32)
    return np.clip(x, 0.0, 1.0), maps


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """Return a same-padded 3x3 Conv2d (no bias), BatchNorm2d and ReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU())


class Backbone(nn.Module):
    """Conv-BN-ReLU stages; returns C2..C5 (strides 4, 8, 16, 32; 32, 48, 64, 64 channels)."""

    widths = (32, 48, 64, 64)

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(1, 16, stride=2)
        self.stage2 = nn.Sequential(conv_bn_relu(16, 32, 2), conv_bn_relu(32, 32))
        self.stage3 = conv_bn_relu(32, 48, 2)
        self.stage4 = conv_bn_relu(48, 64, 2)
        self.stage5 = conv_bn_relu(64, 64, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps C2, C3, C4, C5."""
        c2 = self.stage2(self.stem(x))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        return [c2, c3, c4, self.stage5(c4)]


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-upsample ``x`` to the height and width of ``like``."""
    return F.interpolate(x, size=like.shape[2:], mode="nearest")


class DBFPN(nn.Module):
    """PaddleOCR's DBFPN, upsampling to the size of the level below (mmocr's FPNC).

    Coupling: the top-down Adds tie the four lateral convs' outputs into one 32-channel group;
    each smooth conv's 16 channels land at their own offset of the Concat.
    """

    def __init__(self, in_widths: tuple[int, ...], inner: int = 32, out: int = 16) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, inner, 1, bias=False) for w in in_widths)
        self.smooth = nn.ModuleList(nn.Conv2d(inner, out, 3, padding=1, bias=False)
                                    for _ in in_widths)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return the concat (C5 first) of the smoothed levels at the C2 size."""
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + upsample_to(laterals[i], laterals[i - 1])
        levels = [conv(f) for conv, f in zip(self.smooth, laterals, strict=True)]
        ups = [levels[0]] + [upsample_to(p, levels[0]) for p in levels[1:]]
        return torch.cat(ups[::-1], dim=1)


class DBHead(nn.Module):
    """DBNet's probability head: 3x3 Conv-BN-ReLU, ConvTranspose-BN-ReLU, ConvTranspose, Sigmoid."""

    def __init__(self, in_ch: int, mid: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid, 3, padding=1, bias=False)
        self.conv_bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.ConvTranspose2d(mid, mid, 2, 2)
        self.conv_bn2: nn.Module = nn.BatchNorm2d(mid)
        self.conv3 = nn.ConvTranspose2d(mid, 1, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the probability map, 4x the input's size."""
        x = F.relu(self.conv_bn1(self.conv1(x)))
        x = F.relu(self.conv_bn2(self.conv2(x)))
        return torch.sigmoid(self.conv3(x))


class DBNet(nn.Module):
    """A small DBNet: backbone, DBFPN neck, DB head; (N, 1, H, W) in, (N, 1, H, W) map out."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = DBFPN(Backbone.widths)
        self.head = DBHead(4 * 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the text probability map of a batch of images."""
        return self.head(self.neck(self.backbone(x)))


def dbnet_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus dice loss on the probability map (DBNet's map losses, no OHEM)."""
    dice = 1 - 2 * (prob * target).sum() / (prob.sum() + target.sum() + 1e-6)
    return F.binary_cross_entropy(prob, target) + dice


def pixel_f1(prob: np.ndarray, maps: np.ndarray) -> float:
    """F1 of the pixels above :data:`THRESHOLD` against the target map, over all canvases."""
    found, truth = prob > THRESHOLD, maps > 0.5
    hits = float(np.logical_and(found, truth).sum())
    return 2 * hits / max(1.0, float(found.sum() + truth.sum()))


def for_export(model: DBNet) -> DBNet:
    """A copy of the eval-mode ``model`` with the head's ConvTranspose BatchNorm folded.

    The legacy exporter folds a BatchNorm into the Conv before it, not into a ConvTranspose.
    """
    fused = copy.deepcopy(model)
    head = fused.head
    head.conv2 = nn.utils.fusion.fuse_conv_bn_eval(head.conv2, head.conv_bn2, transpose=True)
    head.conv_bn2 = nn.Identity()
    return fused


def export(model: nn.Module, path: Path) -> None:
    """Export with the legacy exporter: BN folded, batch, height and width symbolic."""
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(2, 1, CANVAS, CANVAS),), path,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=False,
            opset_version=OPSET, dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """Return the onnxruntime map of ``path`` on ``x`` (2 threads, CPU)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def check(path: Path, model: nn.Module, x_val: np.ndarray) -> onnx.ModelProto:
    """Check the file: valid, embedded, symbolic, no BatchNorm, and equal to torch.

    Compared with the unfused torch ``model`` at 64x64 (batches 1, 7 and all of ``x_val``),
    96x128 and 28x28.
    """
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    problems = []
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        problems.append("weights stored as external data")
    for values, name in ((proto.graph.input, INPUT_NAME), (proto.graph.output, OUTPUT_NAME)):
        dims = [d.dim_param for v in values for d in v.type.tensor_type.shape.dim]
        if [v.name for v in values] != [name] or dims != ["batch", "", "height", "width"]:
            problems.append(f"expected {name!r} (batch, 1, height, width), got {values}")
    if any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        problems.append("BatchNormalization left in the graph")
    if problems:
        raise RuntimeError(f"{path.name}: " + "; ".join(problems))
    rng = np.random.default_rng(0)
    others = [rng.uniform(0, 1, (2, 1, h, w)).astype(np.float32) for h, w in ((96, 128), (28, 28))]
    for x in (x_val[:1], x_val[:7], x_val, *others):
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        got = run_onnx(path, x)
        if got.shape != x.shape:
            raise RuntimeError(f"{path.name}: input {x.shape} gave a map of shape {got.shape}")
        np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-4,
                                   err_msg=f"{path.name} at {x.shape}")
    return proto


def held_out(x28: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The held-out canvases (and maps) the README's pixel F1 is measured on."""
    return canvases(x28[val_idx], N_VAL_CANVASES, VAL_SEED)


def build_dbnet(x28: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, path: Path,
                train: Callable[..., nn.Module]) -> tuple[onnx.ModelProto, int, float]:
    """Train, export and check ``dbnet.onnx``; return its proto, parameters and pixel F1.

    Args:
        x28: all digits (``digits.npz``'s ``x``).
        train_idx: the digits the training canvases use.
        val_idx: the digits the held-out canvases use.
        path: where to write the file.
        train: ``build.train`` (Adam, cosine schedule, seeded batches), given a loss.
    """
    x_train, maps_train = canvases(x28[train_idx], N_TRAIN_CANVASES, TRAIN_SEED)
    x_val, maps_val = held_out(x28, val_idx)
    start = time.perf_counter()
    torch.manual_seed(MODEL_SEED)
    model = train(DBNet(), torch.from_numpy(x_train), torch.from_numpy(maps_train), epochs=12,
                  lr=3e-3, batch_size=32, loss=dbnet_loss)
    print(f"trained dbnet in {time.perf_counter() - start:.1f} s")
    export(for_export(model), path)
    proto = check(path, model, x_val)
    return proto, sum(p.numel() for p in model.parameters()), pixel_f1(run_onnx(path, x_val),
                                                                       maps_val)

"""Build, train and export the sample ONNX models of onnxprune.

Rebuild everything in this folder with ``python sample_models/build.py`` (about 1.5 minutes on
two CPU cores, 3 more for the models with symbolic input sizes, 1.5 more for dbnet; torch,
onnxscript, onnx, onnxruntime and scikit-learn are needed). ``python sample_models/build.py resnext
shufflenet`` builds only the files named (by stem) and leaves ``digits.npz`` alone;
``--out-dir DIR`` writes every file into DIR. Each model trains from the same seed whatever is
built with it, so a subset build writes the same bytes as a full one. On a busy machine,
``OMP_WAIT_POLICY=PASSIVE`` stops two-thread training from spinning (several times slower when
the cores are shared); the results do not change.

Data: the 1,797 UCI handwritten digits that scikit-learn ships (8x8 images, values 0..16) made
MNIST-like: values scaled to [0, 1], each image resized to 20x20 (bilinear) and padded with 4
zero pixels on every side to 28x28. ``digits.npz`` holds ``x`` (float32, (1797, 1, 28, 28)) and
``y`` (int64, (1797,)). ``split_indices`` gives the fixed split: the first 1,437 images of a
seed-0 permutation train the models, the other 360 validate them.

Every model reads ``input`` (N, 1, 28, 28) float32 pixels in [0, 1] (MNIST pixel / 255, no
mean/std normalisation) and writes ``logits`` (N, 10); N is the symbolic dimension ``batch``.
The models exported with ``dynamic_hw`` (yolo_c2f, mobilenetv3, resnext, shufflenet,
paddle_style) read (N, 1, H, W) with symbolic ``height`` and ``width``, as detectors and OCR
models do (global average pooling before the classifier); they are checked against torch at
28x28 and 32x32.
Weights are embedded in the .onnx files. Both torch exporters are represented: the default
torch.export-based one (``dynamo=True``) and the legacy TorchScript one (``dynamo=False``).
BatchNormalization is folded into the convolutions except in ``vgg_bn_unfolded.onnx``. The only
change made to an exported file is dropping the per-node Python stack traces of the
torch.export-based exporter (see ``strip_stack_traces``), except for ``paddle_style.onnx``,
which is rewritten by ``paddle_style``.

``dbnet.onnx`` is not a classifier: a DBNet-style text detector trained on canvases of digits,
built by ``build_detector.py`` (see there); it reads ``input`` (N, 1, H, W) and writes ``maps``
(N, 1, H, W), a probability map.

The model classes are importable (``from sample_models.build import ResNet``) so that the native
torch definitions can be compared with what a pruner does to the exported graphs
(``from sample_models.build_detector import DBNet, canvases`` for the detector).
"""

import argparse
import functools
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

# The rewrite of paddle_style.onnx edits protos: this script is an edge, like modelio.
from onnx import helper, numpy_helper  # noqa: TID251
from sklearn.datasets import load_digits
from torch import nn

try:  # imported as sample_models.build
    from sample_models import build_detector
except ImportError:  # run as a script: this folder is on sys.path
    import build_detector  # type: ignore[no-redef]

N_TRAIN = 1437
SPLIT_SEED = 0
NUM_THREADS = 2
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def load_digits_28() -> tuple[np.ndarray, np.ndarray]:
    """Return the scikit-learn digits as MNIST-like images.

    Returns:
        ``x`` float32 (1797, 1, 28, 28) in [0, 1] and ``y`` int64 (1797,).
    """
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4))
    return x.numpy(), digits.target.astype(np.int64)


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the fixed (train, validation) indices of ``n`` images."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return perm[:N_TRAIN], perm[N_TRAIN:]


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Return a same-padded Conv2d (no bias), BatchNorm2d and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class LeNet5(nn.Module):
    """LeNet-5: two 5x5 convolutions, max pooling, then flatten into three dense layers.

    Coupling: the 16 channels of the last convolution are flattened (16 x 5 x 5) into the
    first dense layer, so pruning a channel removes 25 consecutive fc1 inputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.classifier(self.features(x))


class VGGBN(nn.Module):
    """A small VGG: conv-BN-ReLU blocks 64, 64, pool, 128, 128, pool, global average pool, fc.

    ``width`` scales the channel counts (``vgg_bn_small``: 32, 32, 64, 64). Coupling: plain
    chains, with BatchNormalization between each convolution and its ReLU (folded or not,
    depending on the export).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, width),
            conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, a shortcut, an Add and a ReLU.

    The shortcut is the identity when the shape is kept, else a strided 1x1 conv-BN projection.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(main(x) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: stem, identity block, projection block, identity block, GAP, fc.

    Coupling: the residual Adds tie the output channels of the stem and of the first block's
    conv2 together (identity shortcut), and those of the projection, the second block's conv2
    and the third block's conv2 together.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(1, 32)
        self.layers = nn.Sequential(
            BasicBlock(32, 32),
            BasicBlock(32, 64, stride=2),
            BasicBlock(64, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (ReLU6 between).

    The block adds its input to its output when the stride is 1 and the width is kept.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output, plus ``x`` when the block is residual."""
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """A small MobileNetV2: stem, five inverted residual blocks, 1x1 head conv, GAP, fc.

    Coupling: each depthwise convolution ties its channels to the expand convolution before
    it; the residual Adds tie block outputs together (16-, 32- and 64-wide groups).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(inplace=True),
            InvertedResidual(16, 16, stride=1),
            InvertedResidual(16, 32, stride=2),
            InvertedResidual(32, 32, stride=1),
            InvertedResidual(32, 64, stride=2),
            InvertedResidual(64, 64, stride=1),
            nn.Conv2d(64, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU6(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class InceptionBlock(nn.Module):
    """Inception block: 1x1, 1x1->3x3, 1x1->3x3->3x3 and maxpool->1x1 branches, concatenated."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch1 = conv_bn_relu(in_ch, 16, kernel=1)
        self.branch3 = nn.Sequential(conv_bn_relu(in_ch, 16, kernel=1), conv_bn_relu(16, 32))
        self.branch5 = nn.Sequential(
            conv_bn_relu(in_ch, 16, kernel=1), conv_bn_relu(16, 16), conv_bn_relu(16, 16)
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(in_ch, 16, kernel=1)
        )
        self.out_channels = 16 + 32 + 16 + 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the four branch outputs concatenated on channels."""
        branches = (self.branch1, self.branch3, self.branch5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


class Inception(nn.Module):
    """Stem, Inception block, DenseNet-style concat of the block's input and output, conv, fc.

    Coupling: the second concat (stem 32 + inception 80 = 112 channels) feeds a 3x3 conv, so
    its input channels split into segments owned by the stem and by each branch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(1, 32), nn.MaxPool2d(2))
        self.inception = InceptionBlock(32)
        self.head = nn.Sequential(
            conv_bn_relu(32 + self.inception.out_channels, 64),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        x = self.stem(x)
        return self.head(torch.cat([x, self.inception(x)], dim=1))


class MLP(nn.Module):
    """A 784-128-64-10 perceptron; it flattens the (N, 1, 28, 28) input itself.

    Coupling: dense chains only (Gemm -> Relu -> Gemm). The hidden widths are 128 and 64 rather
    than the classic 256 and 128, which would make a 0.95 MB file on its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.layers(x)


def conv_bn_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Return a same-padded Conv2d (no bias), BatchNorm2d and ``act`` (YOLO's ``Conv``)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        act(),
    )


class YoloBottleneck(nn.Module):
    """YOLOv8 bottleneck: two 3x3 Conv-BN-SiLU, plus the input when ``shortcut``."""

    def __init__(self, ch: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = conv_bn_act(ch, ch)
        self.cv2 = conv_bn_act(ch, ch)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return cv2(cv1(x)), plus ``x`` when the bottleneck has a shortcut."""
        out = self.cv2(self.cv1(x))
        return x + out if self.add else out


class C2f(nn.Module):
    """YOLOv8 C2f: 1x1 Conv, Split in halves, bottlenecks on one half, Concat, 1x1 Conv.

    The bottlenecks are chained on the second half; the Concat joins both halves and every
    bottleneck output.
    """

    def __init__(self, in_ch: int, out_ch: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = out_ch // 2
        self.cv1 = conv_bn_act(in_ch, 2 * self.c, kernel=1)
        self.cv2 = conv_bn_act((2 + n) * self.c, out_ch, kernel=1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return cv2(concat(halves of cv1(x), each bottleneck output))."""
        parts = list(self.cv1(x).split((self.c, self.c), 1))
        parts.extend(m(parts[-1]) for m in self.m)
        return self.cv2(torch.cat(parts, 1))


class YoloC2f(nn.Module):
    """A YOLOv8-style backbone and neck with a classification head.

    Backbone: Conv 16 (28x28), Conv 32 stride 2, C2f 32 (P3, 14x14), Conv 64 stride 2, C2f 64
    (P4, 7x7). Neck: nearest 2x upsample of P4, Concat with P3 (64 + 32), C2f 32 without
    shortcuts. Head: GAP, fc. H and W must be multiples of 4 (as YOLO needs multiples of 32).

    Coupling: Split halves of each C2f's cv1 feed the Concat (one as a Concat input, one through
    the bottlenecks, whose shortcut Add ties it to the bottleneck output); the Resize passes
    P4's channels to the neck Concat.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_act(1, 16)
        self.down3 = conv_bn_act(16, 32, stride=2)
        self.c2f3 = C2f(32, 32)
        self.down4 = conv_bn_act(32, 64, stride=2)
        self.c2f4 = C2f(64, 64)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = C2f(64 + 32, 32, shortcut=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        p3 = self.c2f3(self.down3(self.stem(x)))
        p4 = self.c2f4(self.down4(p3))
        out = self.neck(torch.cat([self.up(p4), p3], 1))
        return self.fc(torch.flatten(self.pool(out), 1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: GAP, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid, times the input."""

    def __init__(self, ch: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` scaled channel-wise by its excitation."""
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * scale


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise conv, optional SE, 1x1 linear projection.

    The expand conv is left out when ``hidden == in_ch``; the block adds its input to its
    output when the stride is 1 and the width is kept.
    """

    def __init__(self, in_ch: int, hidden: int, out_ch: int, kernel: int, se: bool,
                 act: type[nn.Module], stride: int) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if hidden != in_ch:
            layers.append(conv_bn_act(in_ch, hidden, kernel=1, act=act))
        layers.append(conv_bn_act(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers += [nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output, plus ``x`` when the block is residual."""
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV3(nn.Module):
    """A small MobileNetV3: stem, five inverted residual blocks, 1x1 conv, GAP, fc, fc.

    Hardswish stem (16, stride 2), blocks 16 (SE), 24 (stride 2), 24, 32 (SE), 32 (SE), a 1x1
    head conv 96, GAP, fc 64 - Hardswish - fc 10.

    Coupling: as MobileNetV2 (depthwise tied to its expand conv, residual Adds of 24 and 32
    channels), plus each SE block: its two 1x1 convs read and write the depthwise channels,
    and the Mul multiplies the excitation back onto them.
    """

    def __init__(self) -> None:
        super().__init__()
        relu, hswish = nn.ReLU, nn.Hardswish
        self.features = nn.Sequential(
            conv_bn_act(1, 16, stride=2, act=hswish),
            InvertedResidualV3(16, 16, 16, 3, se=True, act=relu, stride=1),
            InvertedResidualV3(16, 64, 24, 3, se=False, act=relu, stride=2),
            InvertedResidualV3(24, 72, 24, 3, se=False, act=relu, stride=1),
            InvertedResidualV3(24, 96, 32, 5, se=True, act=hswish, stride=1),
            InvertedResidualV3(32, 128, 32, 5, se=True, act=hswish, stride=1),
            conv_bn_act(32, 96, kernel=1, act=hswish),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 conv, grouped 3x3 conv, 1x1 conv, shortcut, Add, ReLU.

    The grouped conv has ``groups`` paths; the shortcut is the identity, or a 1x1 conv-BN
    projection when the shape changes.
    """

    def __init__(self, in_ch: int, width: int, out_ch: int, groups: int, stride: int) -> None:
        super().__init__()
        self.reduce = conv_bn_act(in_ch, width, kernel=1, act=nn.ReLU)
        self.grouped = conv_bn_act(width, width, stride=stride, groups=groups, act=nn.ReLU)
        self.expand = nn.Sequential(nn.Conv2d(width, out_ch, 1, bias=False),
                                    nn.BatchNorm2d(out_ch))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(expand(grouped(reduce(x))) + shortcut(x))."""
        return F.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class ResNeXt(nn.Module):
    """A small ResNeXt: stem, max pool, two ResNeXt blocks, GAP, fc.

    Stem 32, projection block (32 -> 64, stride 2), identity block (64); both blocks have a
    32-wide grouped 3x3 conv with 4 groups of 8 channels.

    Coupling: each grouped conv ties its 32 input channels to its output channels group by
    group (pruning channel k of group g in its input removes weight rows of group g only);
    the residual Add ties the projection and both expand convs together (64 channels).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(1, 32), nn.MaxPool2d(2))
        self.layers = nn.Sequential(
            ResNeXtBlock(32, 32, 64, groups=4, stride=2),
            ResNeXtBlock(64, 32, 64, groups=4, stride=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, written as torchvision writes it."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: two branches, Concat, channel shuffle.

    Stride 1: split the channels in two halves, keep one, run the other through 1x1 conv, 3x3
    depthwise conv, 1x1 conv. Stride 2: both branches see all channels, the first through a
    depthwise stride-2 conv and a 1x1 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        branch_in = in_ch if stride > 1 else half
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
                nn.BatchNorm2d(in_ch),
                conv_bn_relu(in_ch, half, kernel=1),
            )
        self.branch2 = nn.Sequential(
            conv_bn_relu(branch_in, half, kernel=1),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            conv_bn_relu(half, half, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the shuffled concat of the two branches."""
        if self.stride == 1:
            kept, x2 = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    """A small ShuffleNetV2: stem, three units, 1x1 conv, GAP, fc.

    Stem conv 32 stride 2, basic unit (32), downsampling unit (32 -> 64), basic unit (64),
    1x1 conv 128.

    Coupling: each basic unit's Split passes one half through untouched, the Concat joins the
    halves, and the shuffle (Reshape (N, 2, C/2, H, W), Transpose, Reshape) interleaves them,
    so channel k of the unit's output is channel k // 2 of half k % 2.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 32, stride=2),
            ShuffleUnit(32, 32, stride=1),
            ShuffleUnit(32, 64, stride=2),
            ShuffleUnit(64, 64, stride=1),
            conv_bn_relu(64, 128, kernel=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet5": LeNet5,
    "vgg_bn": VGGBN,
    "resnet": ResNet,
    "mobilenetv2": MobileNetV2,
    "inception": Inception,
    "mlp": MLP,
    "vgg_bn_small": functools.partial(VGGBN, width=32),
    "yolo_c2f": YoloC2f,
    "mobilenetv3": MobileNetV3,
    "resnext": ResNeXt,
    "shufflenet": ShuffleNet,
}


def paddle_style(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite a Conv -> BatchNormalization graph the way PaddlePaddle exports tend to look.

    Each ``Conv -> BatchNormalization`` pair becomes ``Conv`` (no bias input) ``-> Add(.,
    Reshape(b, [1, C, 1, 1])) -> Mul(., Reshape(s, [1, C, 1, 1])) -> Add(., Reshape(t, [1, C, 1,
    1]))``: the batch norm ``s * (x - mean) + beta`` as a conv bias ``b = -mean`` added
    separately (Paddle's conv2d + elementwise_add) and an affine_channel scale
    ``s = gamma / sqrt(var + eps)`` and shift ``t = beta``. Every Reshape reads two initializers
    (the vector and its shape), as an exporter without constant folding writes them. The rest
    of the graph (symbolic input size included) is kept.
    """
    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    used = set()
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def channel_vector(name: str, values: np.ndarray, after: str, op: str) -> str:
        """Append ``op(after, Reshape(values, [1, C, 1, 1]))``; return its output name."""
        shape = np.array([1, len(values), 1, 1], dtype=np.int64)
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
        inits.append(numpy_helper.from_array(shape, f"{name}_shape"))
        nodes.append(helper.make_node(
            "Reshape", [name, f"{name}_shape"], [f"{name}_reshaped"], name=f"{name}_reshape"))
        nodes.append(helper.make_node(
            op, [after, f"{name}_reshaped"], [f"{name}_out"], name=f"{name}_{op.lower()}"))
        return f"{name}_out"

    for node in graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        conv = producers[node.input[0]]
        if conv.op_type != "Conv" or len(conv.input) > 2:
            raise RuntimeError(f"{node.name}: expected a bias-free Conv before the BatchNorm")
        gamma, beta, mean, var = (numpy_helper.to_array(weights[n]).astype(np.float64)
                                  for n in node.input[1:])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        used.update(node.input[1:])
        prefix = conv.output[0].strip("/").replace("/", ".").removesuffix("_output_0")
        out = channel_vector(f"{prefix}.bias", -mean, conv.output[0], "Add")
        out = channel_vector(f"{prefix}.affine_scale", gamma / np.sqrt(var + eps), out, "Mul")
        out = channel_vector(f"{prefix}.affine_shift", beta, out, "Add")
        nodes[-1].output[0] = node.output[0]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + inits)
    proto.doc_string = "PaddlePaddle-style rewrite of a Conv-BatchNormalization export"
    return proto


@dataclass(frozen=True)
class ExportSpec:
    """How one .onnx file is exported from a trained model, or rewritten from another file.

    ``dynamic_hw``: the input height and width are symbolic (``height``, ``width``) too.
    ``rewrite``: the exported
    graph is passed through it before it is written, and must keep the exported file's
    outputs within 1e-4 in onnxruntime.
    """

    file: str
    model: str
    dynamo: bool
    opset: int | None = None
    keep_batchnorm: bool = False
    dynamic_hw: bool = False
    rewrite: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None


EXPORTS = (
    ExportSpec("lenet5.onnx", "lenet5", dynamo=True),
    ExportSpec("lenet5_opset11.onnx", "lenet5", dynamo=False, opset=11),
    ExportSpec("vgg_bn.onnx", "vgg_bn", dynamo=True),
    ExportSpec("vgg_bn_unfolded.onnx", "vgg_bn", dynamo=False, keep_batchnorm=True),
    ExportSpec("resnet.onnx", "resnet", dynamo=False),
    ExportSpec("mobilenetv2.onnx", "mobilenetv2", dynamo=True),
    ExportSpec("inception.onnx", "inception", dynamo=True),
    ExportSpec("mlp.onnx", "mlp", dynamo=True),
    ExportSpec("yolo_c2f.onnx", "yolo_c2f", dynamo=False, opset=17, dynamic_hw=True),
    ExportSpec("mobilenetv3.onnx", "mobilenetv3", dynamo=True, dynamic_hw=True),
    ExportSpec("resnext.onnx", "resnext", dynamo=False, dynamic_hw=True),
    ExportSpec("shufflenet.onnx", "shufflenet", dynamo=True, dynamic_hw=True),
    ExportSpec("paddle_style.onnx", "vgg_bn_small", dynamo=False, keep_batchnorm=True,
               dynamic_hw=True, rewrite=paddle_style),
)
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuildResult:
    """What one exported file turned out to be."""

    file: str
    size_bytes: int
    parameters: int
    opset: int
    op_types: tuple[str, ...]
    accuracy: float


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 10,
    lr: float = 2e-3,
    batch_size: int = 64,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> nn.Module:
    """Train ``model`` with Adam on ``loss(output, y)`` (cross-entropy), return it in eval mode."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss(model(x[idx]), y[idx]).backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


def strip_stack_traces(path: Path) -> None:
    """Drop the Python stack traces that the torch.export-based exporter puts on every node.

    They hold absolute paths of the build machine and change with every edit of this script;
    the other node metadata (namespace, class hierarchy, FX node, name scopes) is kept.
    """
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path))


def export(model: nn.Module, spec: ExportSpec, path: Path) -> None:
    """Export the eval-mode ``model`` to ``path`` as ``spec`` says, weights embedded."""
    example = (torch.zeros(2, 1, 28, 28),)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if spec.dynamo:
        dims = {0: torch.export.Dim("batch")}
        if spec.dynamic_hw:
            dims |= {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        torch.onnx.export(
            model,
            example,
            path,
            **names,
            opset_version=spec.opset,
            dynamic_shapes=(dims,),
            external_data=False,
            verbose=False,
        )
        strip_stack_traces(path)
        return
    mode = torch.onnx.TrainingMode.PRESERVE if spec.keep_batchnorm else torch.onnx.TrainingMode.EVAL
    input_axes = {0: "batch", 2: "height", 3: "width"} if spec.dynamic_hw else {0: "batch"}
    with warnings.catch_warnings():
        # The legacy TorchScript exporter is deprecated; it is used on purpose here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            example,
            path,
            **names,
            dynamo=False,
            opset_version=spec.opset,
            dynamic_axes={INPUT_NAME: input_axes, OUTPUT_NAME: {0: "batch"}},
            training=mode,
            do_constant_folding=not spec.keep_batchnorm,
        )


def check_file(path: Path, spec: ExportSpec) -> onnx.ModelProto:
    """Check an exported file: valid, self-contained, named and batch-symbolic as promised.

    With ``spec.dynamic_hw`` the input height and width must be symbolic too, else fixed; a
    ``rewrite`` must have replaced the BatchNormalization that ``keep_batchnorm`` exported.
    """
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    problems = []
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        problems.append("weights stored as external data")
    for values, name in ((proto.graph.input, INPUT_NAME), (proto.graph.output, OUTPUT_NAME)):
        if [v.name for v in values] != [name]:
            problems.append(f"expected the single graph value {name!r}, got {values}")
        elif not values[0].type.tensor_type.shape.dim[0].dim_param:
            problems.append(f"batch dimension of {name!r} is not symbolic")
    if [v.name for v in proto.graph.input] == [INPUT_NAME]:
        hw = proto.graph.input[0].type.tensor_type.shape.dim[2:]
        if [bool(d.dim_param) for d in hw] != [spec.dynamic_hw] * 2:
            problems.append(f"input height/width {list(hw)}: symbolic wanted {spec.dynamic_hw}")
    has_batchnorm = any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    wanted = spec.keep_batchnorm and spec.rewrite is None
    if has_batchnorm != wanted:
        problems.append(f"BatchNormalization present: {has_batchnorm}, wanted {wanted}")
    if problems:
        raise RuntimeError(f"{path.name}: " + "; ".join(problems))
    return proto


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """Return the onnxruntime logits of ``path`` on ``x`` (2 threads, CPU)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return logits


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
                  atol: float = 1e-3) -> float:
    """Return the onnxruntime accuracy of ``path`` on (x, y), checking it against torch.

    The file must also run at batch sizes 1 and 7, and its logits on ``x`` must match the
    ``reference`` logits (torch's, or the source file's for a rewrite).
    """
    for n in (1, 7):
        logits = run_onnx(path, x[:n])
        if logits.shape != (n, 10):
            raise RuntimeError(f"{path.name}: batch {n} gave logits of shape {logits.shape}")
    logits = run_onnx(path, x)
    np.testing.assert_allclose(logits, reference, rtol=atol, atol=atol, err_msg=path.name)
    return float((logits.argmax(axis=1) == y).mean())


def check_other_size(path: Path, x: np.ndarray, reference: np.ndarray) -> None:
    """Check that a symbolic-size file runs on ``x`` (another H x W), matching ``reference``."""
    logits = run_onnx(path, x)
    np.testing.assert_allclose(logits, reference, rtol=1e-3, atol=1e-3,
                               err_msg=f"{path.name} at {x.shape}")


def out_path(spec: ExportSpec, out_dir: Path | None) -> Path:
    """Where ``spec.file`` goes: ``out_dir`` if given, else here."""
    return (out_dir or HERE) / spec.file


def build(files: list[str] | None = None, out_dir: Path | None = None) -> list[BuildResult]:
    """Build the sample files named by stem in ``files`` (default all); return what was built.

    Writes each file to :func:`out_path`. Only a build of every file writes ``digits.npz``
    (into ``out_dir``, default here). Each model is trained from the same seed whichever files
    are chosen, so a subset build reproduces its files exactly.
    """
    detector = build_detector.FILE.removesuffix(".onnx")
    known = [spec.file.removesuffix(".onnx") for spec in EXPORTS] + [detector]
    unknown = sorted(set(files or ()) - set(known))
    if unknown:
        raise SystemExit(f"unknown sample {', '.join(unknown)}; known: {', '.join(known)}")
    specs = [s for s in EXPORTS if not files or s.file.removesuffix(".onnx") in files]
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    x, y = load_digits_28()
    if not files:
        (out_dir or HERE).mkdir(parents=True, exist_ok=True)
        np.savez_compressed((out_dir or HERE) / "digits.npz", x=x, y=y)
    train_idx, val_idx = split_indices(len(x))
    x_train, y_train = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
    x_val, y_val = x[val_idx], y[val_idx]
    x_val32 = np.pad(x_val, ((0, 0), (0, 0), (2, 2), (2, 2)))

    trained: dict[str, nn.Module] = {}
    results = []
    for spec in specs:
        path = out_path(spec, out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec.model not in trained:
            start = time.perf_counter()
            torch.manual_seed(SPLIT_SEED)
            trained[spec.model] = train(MODELS[spec.model](), x_train, y_train)
            print(f"trained {spec.model} in {time.perf_counter() - start:.1f} s")
        model = trained[spec.model]
        with torch.no_grad():
            reference = model(torch.from_numpy(x_val)).numpy()
        if spec.rewrite is None:
            export(model, spec, path)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                exported = Path(tmp) / spec.file
                export(model, spec, exported)
                check_file(exported, replace(spec, rewrite=None))
                onnx.save(spec.rewrite(onnx.load(str(exported))), str(path))
                check_file(path, spec)
                for x_check in (x_val, x_val32):
                    np.testing.assert_allclose(run_onnx(path, x_check),
                                               run_onnx(exported, x_check),
                                               rtol=1e-4, atol=1e-4, err_msg=spec.file)
        proto = check_file(path, spec)
        accuracy = onnx_accuracy(path, x_val, y_val, reference)
        if spec.dynamic_hw:
            with torch.no_grad():
                check_other_size(path, x_val32, model(torch.from_numpy(x_val32)).numpy())
        result = BuildResult(
            file=spec.file,
            size_bytes=path.stat().st_size,
            parameters=sum(p.numel() for p in model.parameters()),
            opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            op_types=tuple(sorted({n.op_type for n in proto.graph.node})),
            accuracy=accuracy,
        )
        print(
            f"{result.file:22s} {result.size_bytes / 1024:6.0f} KiB  opset {result.opset:2d}  "
            f"{result.parameters:7d} params  val acc {result.accuracy:.4f}  "
            f"{' '.join(result.op_types)}"
        )
        results.append(result)
    if not files or detector in files:
        results.append(build_dbnet(x, train_idx, val_idx, out_dir))
    return results


def build_dbnet(x: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                out_dir: Path | None) -> BuildResult:
    """Build ``dbnet.onnx`` (:mod:`build_detector`); its accuracy is the held-out pixel F1."""
    path = (out_dir or HERE) / build_detector.FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    proto, parameters, f1 = build_detector.build_dbnet(x, train_idx, val_idx, path, train)
    result = BuildResult(
        file=path.name,
        size_bytes=path.stat().st_size,
        parameters=parameters,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        op_types=tuple(sorted({n.op_type for n in proto.graph.node})),
        accuracy=f1,
    )
    print(f"{result.file:22s} {result.size_bytes / 1024:6.0f} KiB  opset {result.opset:2d}  "
          f"{result.parameters:7d} params  pixel F1 {f1:.4f}  {' '.join(result.op_types)}")
    return result


def main() -> None:
    """Parse the command line and build."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", metavar="NAME",
                        help="samples to build, by file stem (default: all, and digits.npz)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="write every file here (default: this folder)")
    args = parser.parse_args()
    build(args.files, args.out_dir)


if __name__ == "__main__":
    main()

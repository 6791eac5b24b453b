"""Build, train and export the sample ONNX models of onnxprune.

Rebuild everything in this folder with ``python sample_models/build.py`` (about 1.5 minutes on
two CPU cores; torch, onnx, onnxruntime and scikit-learn are needed).

Data: the 1,797 UCI handwritten digits that scikit-learn ships (8x8 images, values 0..16) made
MNIST-like: values scaled to [0, 1], each image resized to 20x20 (bilinear) and padded with 4
zero pixels on every side to 28x28. ``digits.npz`` holds ``x`` (float32, (1797, 1, 28, 28)) and
``y`` (int64, (1797,)). ``split_indices`` gives the fixed split: the first 1,437 images of a
seed-0 permutation train the models, the other 360 validate them.

Every model reads ``input`` (N, 1, 28, 28) float32 pixels in [0, 1] (MNIST pixel / 255, no
mean/std normalisation) and writes ``logits`` (N, 10); N is the symbolic dimension ``batch``.
Weights are embedded in the .onnx files. Both torch exporters are represented: the default
torch.export-based one (``dynamo=True``) and the legacy TorchScript one (``dynamo=False``).
BatchNormalization is folded into the convolutions except in ``vgg_bn_unfolded.onnx``. The only
change made to an exported file is dropping the per-node Python stack traces of the
torch.export-based exporter (see ``strip_stack_traces``).

The model classes are importable (``from sample_models.build import ResNet``) so that the native
torch definitions can be compared with what a pruner does to the exported graphs.
"""

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

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

    Coupling: plain chains, with BatchNormalization between each convolution and its ReLU
    (folded or not, depending on the export).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 64),
            conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
            conv_bn_relu(64, 128),
            conv_bn_relu(128, 128),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

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


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet5": LeNet5,
    "vgg_bn": VGGBN,
    "resnet": ResNet,
    "mobilenetv2": MobileNetV2,
    "inception": Inception,
    "mlp": MLP,
}


@dataclass(frozen=True)
class ExportSpec:
    """How one .onnx file is exported from a trained model."""

    file: str
    model: str
    dynamo: bool
    opset: int | None = None
    keep_batchnorm: bool = False


EXPORTS = (
    ExportSpec("lenet5.onnx", "lenet5", dynamo=True),
    ExportSpec("lenet5_opset11.onnx", "lenet5", dynamo=False, opset=11),
    ExportSpec("vgg_bn.onnx", "vgg_bn", dynamo=True),
    ExportSpec("vgg_bn_unfolded.onnx", "vgg_bn", dynamo=False, keep_batchnorm=True),
    ExportSpec("resnet.onnx", "resnet", dynamo=False),
    ExportSpec("mobilenetv2.onnx", "mobilenetv2", dynamo=True),
    ExportSpec("inception.onnx", "inception", dynamo=True),
    ExportSpec("mlp.onnx", "mlp", dynamo=True),
)


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
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy, then return it in eval mode."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
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
        batch = torch.export.Dim("batch")
        torch.onnx.export(
            model,
            example,
            path,
            **names,
            opset_version=spec.opset,
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
        strip_stack_traces(path)
        return
    mode = torch.onnx.TrainingMode.PRESERVE if spec.keep_batchnorm else torch.onnx.TrainingMode.EVAL
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
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            training=mode,
            do_constant_folding=not spec.keep_batchnorm,
        )


def check_file(path: Path, keep_batchnorm: bool) -> onnx.ModelProto:
    """Check an exported file: valid, self-contained, named and batch-symbolic as promised."""
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
    has_batchnorm = any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    if has_batchnorm != keep_batchnorm:
        problems.append(f"BatchNormalization present: {has_batchnorm}, wanted {keep_batchnorm}")
    if problems:
        raise RuntimeError(f"{path.name}: " + "; ".join(problems))
    return proto


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray) -> float:
    """Return the onnxruntime accuracy of ``path`` on (x, y), checking it against torch.

    The file must also run at batch sizes 1 and 7, and its logits on ``x`` must match the torch
    ``reference`` logits.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for n in (1, 7):
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x[:n]})
        if logits.shape != (n, 10):
            raise RuntimeError(f"{path.name}: batch {n} gave logits of shape {logits.shape}")
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    np.testing.assert_allclose(logits, reference, rtol=1e-3, atol=1e-3, err_msg=path.name)
    return float((logits.argmax(axis=1) == y).mean())


def build_all(out_dir: Path) -> list[BuildResult]:
    """Write ``digits.npz`` and every sample model into ``out_dir``; return what was built."""
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = load_digits_28()
    np.savez_compressed(out_dir / "digits.npz", x=x, y=y)
    train_idx, val_idx = split_indices(len(x))
    x_train, y_train = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
    x_val, y_val = x[val_idx], y[val_idx]

    trained: dict[str, nn.Module] = {}
    results = []
    for spec in EXPORTS:
        if spec.model not in trained:
            start = time.perf_counter()
            torch.manual_seed(SPLIT_SEED)
            trained[spec.model] = train(MODELS[spec.model](), x_train, y_train)
            print(f"trained {spec.model} in {time.perf_counter() - start:.1f} s")
        model = trained[spec.model]
        path = out_dir / spec.file
        export(model, spec, path)
        proto = check_file(path, spec.keep_batchnorm)
        with torch.no_grad():
            reference = model(torch.from_numpy(x_val)).numpy()
        result = BuildResult(
            file=spec.file,
            size_bytes=path.stat().st_size,
            parameters=sum(p.numel() for p in model.parameters()),
            opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            op_types=tuple(sorted({n.op_type for n in proto.graph.node})),
            accuracy=onnx_accuracy(path, x_val, y_val, reference),
        )
        print(
            f"{result.file:22s} {result.size_bytes / 1024:6.0f} KiB  opset {result.opset:2d}  "
            f"{result.parameters:7d} params  val acc {result.accuracy:.4f}  "
            f"{' '.join(result.op_types)}"
        )
        results.append(result)
    return results


if __name__ == "__main__":
    build_all(Path(__file__).resolve().parent)

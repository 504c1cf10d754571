"""ResNet family with torchvision-compatible parameter names.

A torchvision ``resnet18``/``resnet34``/``resnet50`` state dict loads into these
models unchanged, so a user's ImageNet weights file is a valid base. Every model
also describes itself as a runtime graph (docs/format.md) through ``graph()``;
the graph's node names are the module names, which is how task bundles refer
to layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "resnet18",
    "resnet34",
    "resnet50",
    "spaedge_tiny",
    "spaedge_small",
]


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(cin, width, 3, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = _conv(width, width, 3)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(cin, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)  # stride on the 3x3 (torchvision "v1.5")
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, width * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with an ImageNet stem (7x7/2 conv + 3x3/2 max-pool) or a CIFAR
    stem (3x3/1 conv, no pool) for small inputs."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        arch: str = "resnet",
    ):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', not {stem!r}")
        self.arch = arch
        self.stem = stem
        self.in_channels = in_channels
        self.block_type = block
        self.layer_sizes = tuple(layers)
        self.widths = tuple(widths)
        w0 = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, w0, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, w0, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=False)
        cin = w0
        for i, (n, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or cin != width * block.expansion:
                    down = nn.Sequential(
                        _conv(cin, width * block.expansion, 1, s),
                        nn.BatchNorm2d(width * block.expansion),
                    )
                blocks.append(block(cin, width, s, down))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_layers = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def replace_head(self, num_classes: int) -> None:
        """A new task head (every task trains its own)."""
        self.fc = nn.Linear(self.fc.in_features, num_classes)

    # ------------------------------------------------------------------ graph
    def graph(self) -> dict:
        """The runtime graph of docs/format.md; node names are module names."""
        nodes: list[dict] = []

        def conv(name: str, src: str) -> str:
            m = self.get_submodule(name)
            nodes.append(
                {
                    "name": name,
                    "op": "conv",
                    "inputs": [src],
                    "output": name,
                    "kernel": _kernel_of(m),
                    "stride": _stride_of(m),
                    "padding": _padding_of(m),
                    "in_channels": _in_of(m),
                    "out_channels": _out_of(m),
                }
            )
            return name

        def bn(name: str, src: str) -> str:
            m = self.get_submodule(name)
            nodes.append(
                {
                    "name": name,
                    "op": "batchnorm",
                    "inputs": [src],
                    "output": name,
                    "eps": float(m.eps),
                }
            )
            return name

        def op(name: str, kind: str, *srcs: str, **fields) -> str:
            nodes.append({"name": name, "op": kind, "inputs": list(srcs), "output": name, **fields})
            return name

        t = op("relu", "relu", bn("bn1", conv("conv1", "x")))
        if self.stem == "imagenet":
            t = op("maxpool", "maxpool", t, kernel=3, stride=2, padding=1)
        for i in range(self.num_layers):
            for j, blk in enumerate(getattr(self, f"layer{i + 1}")):
                p = f"layer{i + 1}.{j}"
                identity = t
                if blk.downsample is not None:
                    identity = bn(f"{p}.downsample.1", conv(f"{p}.downsample.0", t))
                h = op(f"{p}.relu1", "relu", bn(f"{p}.bn1", conv(f"{p}.conv1", t)))
                h = bn(f"{p}.bn2", conv(f"{p}.conv2", h))
                if isinstance(blk, Bottleneck):
                    h = op(f"{p}.relu2", "relu", h)
                    h = bn(f"{p}.bn3", conv(f"{p}.conv3", h))
                t = op(f"{p}.relu_out", "relu", op(f"{p}.add", "add", h, identity))
        t = op("avgpool", "gap", t)
        nodes.append({"name": "fc", "op": "linear", "inputs": [t], "output": "logits"})
        return {
            "input": "x",
            "input_channels": self.in_channels,
            "nodes": nodes,
            "output": "logits",
        }

    def native_input_size(self) -> tuple[int, int, int]:
        """The input size the stem was made for: 224x224 for the ImageNet stem;
        for the small stem 28x28 when grayscale (the built-in base, MNIST-like
        data) and 32x32 otherwise (CIFAR). Used for tasks of no fixed size
        (image folders)."""
        if self.stem == "imagenet":
            return (self.in_channels, 224, 224)
        side = 28 if self.in_channels == 1 else 32
        return (self.in_channels, side, side)

    def config(self) -> dict:
        """Enough to rebuild the architecture (stored in bundles and runs)."""
        return {
            "arch": self.arch,
            "block": self.block_type.__name__,
            "layers": list(self.layer_sizes),
            "widths": list(self.widths),
            "in_channels": self.in_channels,
            "stem": self.stem,
        }


# A conv may be a plain nn.Conv2d or an adapter wrapping one; both expose these.
def _kernel_of(m) -> int:
    k = m.kernel_size
    return int(k[0] if isinstance(k, tuple) else k)


def _stride_of(m) -> int:
    s = m.stride
    return int(s[0] if isinstance(s, tuple) else s)


def _padding_of(m) -> int:
    p = m.padding
    return int(p[0] if isinstance(p, tuple) else p)


def _in_of(m) -> int:
    return int(getattr(m, "base_in_channels", m.in_channels))


def _out_of(m) -> int:
    return int(getattr(m, "base_out_channels", m.out_channels))


def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), arch="resnet18", **kw)


def resnet34(**kw) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), arch="resnet34", **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), arch="resnet50", **kw)


def spaedge_tiny(**kw) -> ResNet:
    """The built-in base: a small grayscale ResNet for 28x28 inputs."""
    kw.setdefault("in_channels", 1)
    kw.setdefault("stem", "cifar")
    kw.setdefault("widths", (16, 32, 64, 128))
    return ResNet(BasicBlock, (1, 1, 1, 1), arch="spaedge-tiny", **kw)


def spaedge_small(**kw) -> ResNet:
    """The second built-in base: ResNet-18's layout (BasicBlock x [2, 2, 2, 2])
    at half width for 28x28 grayscale inputs (~2.8M parameters)."""
    kw.setdefault("in_channels", 1)
    kw.setdefault("stem", "cifar")
    kw.setdefault("widths", (32, 64, 128, 256))
    return ResNet(BasicBlock, (2, 2, 2, 2), arch="spaedge-small", **kw)


def from_config(cfg: dict, num_classes: int = 1000) -> ResNet:
    block = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}[cfg["block"]]
    return ResNet(
        block,
        cfg["layers"],
        num_classes=num_classes,
        in_channels=cfg["in_channels"],
        widths=cfg["widths"],
        stem=cfg["stem"],
        arch=cfg["arch"],
    )

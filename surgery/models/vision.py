"""Small image classifiers we train ourselves (no hub): a CIFAR ResNet, an MNIST CNN, a digits MLP.

Input normalisation lives inside each model (as in SalUn's code), so datasets yield [0, 1] floats.
Each model is built from a JSON-able config (`arch` + keyword arguments) through `build_vision`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgery.errors import SurgeryError


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32×32 images (He et al. 2016, CIFAR variant), widths w, 2w, 4w."""

    def __init__(self, n: int = 1, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = Normalize([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SmallCNN(nn.Module):
    """Two conv layers and two linear layers, for MNIST-sized grey images."""

    def __init__(self, channels: int = 32, hidden: int = 128, num_classes: int = 10,
                 image_size: int = 28) -> None:
        super().__init__()
        self.normalize = Normalize([0.1307], [0.3081])
        self.conv1 = nn.Conv2d(1, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, 1, 1)
        side = image_size // 4
        self.fc1 = nn.Linear(2 * channels * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(self.normalize(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class MLP(nn.Module):
    """A plain multi-layer perceptron on flattened images (scikit-learn digits: 8×8)."""

    def __init__(self, in_features: int = 64, hidden: int = 128, depth: int = 2,
                 num_classes: int = 10) -> None:
        super().__init__()
        dims = [in_features] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.fc(x)


VISION_ARCHS: dict[str, type[nn.Module]] = {
    "resnet_cifar": ResNetCifar,
    "small_cnn": SmallCNN,
    "mlp": MLP,
}


def build_vision(config: dict[str, Any]) -> nn.Module:
    """Instantiate a vision classifier from `{"arch": name, **kwargs}`."""
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch not in VISION_ARCHS:
        raise SurgeryError(f"unknown vision architecture {arch!r}; known: {sorted(VISION_ARCHS)}")
    try:
        model = VISION_ARCHS[arch](**cfg)
    except TypeError as e:
        raise SurgeryError(f"bad config for {arch}: {e}") from None
    model.surgery_config = {"arch": arch, **cfg}
    return model

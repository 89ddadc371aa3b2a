"""OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019), written from the paper.

Building blocks: Lite 3x3 (pointwise then depthwise conv), omni-scale residual bottlenecks with T=4 streams of
1..4 stacked Lite 3x3 layers, fused by a unified aggregation gate shared across streams. Widths
(64, 256, 384, 512) are scaled by the width multiplier (x1.0, x0.75, x0.5, x0.25).
Only the convolutional trunk is here; pooling and the embedding live in :mod:`reid.models.head`.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class LiteConv3x3(nn.Sequential):
    """Pointwise conv then depthwise 3x3 conv, BN, ReLU (the paper's "Lite 3x3")."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class AggregationGate(nn.Module):
    """Channel-wise gate computed from the stream itself (global pool -> MLP -> sigmoid); shared by all streams."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(g))))
        return x * g


class OmniScaleBlock(nn.Module):
    """Bottleneck with T streams of receptive fields 3, 5, 7, 9 (1..T Lite 3x3 layers) and a unified gate."""

    def __init__(self, cin: int, cout: int, streams: int = 4, reduction: int = 4) -> None:
        super().__init__()
        mid = cout // reduction
        self.reduce = ConvBNReLU(cin, mid, 1)
        self.streams = nn.ModuleList(
            nn.Sequential(*[LiteConv3x3(mid, mid) for _ in range(t)]) for t in range(1, streams + 1)
        )
        self.gate = AggregationGate(mid)
        self.expand = ConvBNReLU(mid, cout, 1, relu=False)
        self.shortcut = ConvBNReLU(cin, cout, 1, relu=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(x)
        fused = sum(self.gate(stream(h)) for stream in self.streams)
        return torch.relu(self.expand(fused) + self.shortcut(x))


class OSNet(nn.Module):
    """The OSNet trunk: conv1 (7x7/2) + maxpool, three stages of two omni-scale blocks (with 1x1 conv + 2x2
    average-pool transitions after the first two), and a final 1x1 conv. Output: ``(N, C, H/16, W/16)``."""

    def __init__(self, width: float = 1.0, blocks: tuple[int, int, int] = (2, 2, 2)) -> None:
        super().__init__()
        c = [max(round(v * width), 8) for v in (64, 256, 384, 512)]
        self.conv1 = ConvBNReLU(3, c[0], 7, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stage2 = self._stage(c[0], c[1], blocks[0], transition=True)
        self.stage3 = self._stage(c[1], c[2], blocks[1], transition=True)
        self.stage4 = self._stage(c[2], c[3], blocks[2], transition=False)
        self.conv5 = ConvBNReLU(c[3], c[3], 1)
        self.out_channels = c[3]
        self._init_weights()

    @staticmethod
    def _stage(cin: int, cout: int, n: int, transition: bool) -> nn.Sequential:
        layers: list[nn.Module] = [OmniScaleBlock(cin, cout)]
        layers += [OmniScaleBlock(cout, cout) for _ in range(n - 1)]
        if transition:
            layers += [ConvBNReLU(cout, cout, 1), nn.AvgPool2d(2, stride=2)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.stage4(self.stage3(self.stage2(x))))

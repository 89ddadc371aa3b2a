"""Backbone trunks by name: each builder returns ``(module producing (N, C, h, w), C)``."""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from reid.models.osnet import OSNet
from reid.utils.registry import Registry

BackboneFactory = Callable[..., tuple[nn.Module, int]]
BACKBONES: Registry[tuple[nn.Module, int]] = Registry("backbone")


def _resnet(ctor: Callable[..., nn.Module], last_stride: int) -> tuple[nn.Module, int]:
    net = ctor(weights=None)
    if last_stride == 1:
        # BoT "last stride 1": keep layer4 at the resolution of layer3 (16x8 for 256x128 input).
        block = net.layer4[0]
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        conv.stride = (1, 1)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return trunk, net.fc.in_features


@BACKBONES.register("resnet18")
def resnet18(last_stride: int = 2) -> tuple[nn.Module, int]:
    return _resnet(torchvision.models.resnet18, last_stride)


@BACKBONES.register("resnet50")
def resnet50(last_stride: int = 2) -> tuple[nn.Module, int]:
    return _resnet(torchvision.models.resnet50, last_stride)


@BACKBONES.register("mobilenetv2")
def mobilenetv2(last_stride: int = 2) -> tuple[nn.Module, int]:
    net = torchvision.models.mobilenet_v2(weights=None)
    if last_stride == 1:
        net.features[14].conv[1][0].stride = (1, 1)  # the last stride-2 depthwise conv
    return net.features, 1280


@BACKBONES.register("mobilenetv3_small")
def mobilenetv3_small(last_stride: int = 2) -> tuple[nn.Module, int]:
    net = torchvision.models.mobilenet_v3_small(weights=None)
    return net.features, 576


@BACKBONES.register("mobilenetv3_large")
def mobilenetv3_large(last_stride: int = 2) -> tuple[nn.Module, int]:
    net = torchvision.models.mobilenet_v3_large(weights=None)
    return net.features, 960


@BACKBONES.register("osnet_x1_0")
def osnet_x1_0(last_stride: int = 2) -> tuple[nn.Module, int]:
    net = OSNet(width=1.0)
    return net, net.out_channels


@BACKBONES.register("osnet_x0_25")
def osnet_x0_25(last_stride: int = 2) -> tuple[nn.Module, int]:
    net = OSNet(width=0.25)
    return net, net.out_channels


# torchvision's names, for "imagenet" weights through the weights API (downloads when online).
TORCHVISION_WEIGHTS = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "mobilenetv2": ("mobilenet_v2", "MobileNet_V2_Weights"),
    "mobilenetv3_small": ("mobilenet_v3_small", "MobileNet_V3_Small_Weights"),
    "mobilenetv3_large": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
}

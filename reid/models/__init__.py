"""Models: backbones by name, embedding head (GeM/avg, projection, BNNeck), pretrained loading, checkpoints."""

from reid.models.backbones import BACKBONES
from reid.models.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    make_model_id,
    read_checkpoint,
    save_checkpoint,
)
from reid.models.head import EmbeddingHead, GeM
from reid.models.model import MODELS, ReIDModel, build_model
from reid.models.osnet import OSNet
from reid.models.pretrained import OFFLINE_WEIGHTS, load_by_position, load_pretrained_backbone

__all__ = [
    "BACKBONES",
    "MODELS",
    "OFFLINE_WEIGHTS",
    "CheckpointMeta",
    "EmbeddingHead",
    "GeM",
    "OSNet",
    "ReIDModel",
    "build_model",
    "load_by_position",
    "load_checkpoint",
    "load_pretrained_backbone",
    "make_model_id",
    "read_checkpoint",
    "save_checkpoint",
]

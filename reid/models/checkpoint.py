"""Embedding checkpoints: one torch file with the weights and everything needed to use them.

Content (plain types only, so ``torch.load(weights_only=True)`` reads it):
``format``, ``version``, ``arch``, ``model_cfg`` (``build_model`` kwargs), ``input_size`` (H, W), ``mean``, ``std``,
``embedding_dim``, ``modality``, ``model_id``, ``state_dict``, ``extra`` (free: metrics, training config).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from reid.errors import CheckpointError, ConfigError
from reid.models.model import ReIDModel, build_model
from reid.utils.io import atomic_torch_save

FORMAT = "reid-embedding-checkpoint"
VERSION = 1
MODALITIES = ("body", "face")


@dataclass
class CheckpointMeta:
    arch: str
    model_cfg: dict[str, Any]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    modality: str
    model_id: str
    extra: dict[str, Any] = field(default_factory=dict)


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, shapes, dtypes and bytes in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_model_id(arch: str, embedding_dim: int, state_dict: dict[str, torch.Tensor]) -> str:
    """``<arch>-<dim>d-<12 hex of the weights' SHA-256>``: different weights never share an id."""
    return f"{arch}-{embedding_dim}d-{weights_digest(state_dict)[:12]}"


def save_checkpoint(
    path: str | os.PathLike,
    model: ReIDModel,
    input_size: tuple[int, int] = (256, 128),
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    modality: str = "body",
    extra: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """Write ``model`` to ``path`` atomically (temp file + rename) and return its metadata."""
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
    # contiguous: a model trained channels-last saves the same bytes (and loads the same) as any other
    state = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }
    meta = CheckpointMeta(
        arch=model.arch,
        model_cfg=dict(model.config),
        input_size=(int(input_size[0]), int(input_size[1])),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        embedding_dim=model.embedding_dim,
        modality=modality,
        model_id=make_model_id(model.arch, model.embedding_dim, state),
        extra=dict(extra or {}),
    )
    payload = {"format": FORMAT, "version": VERSION, **asdict(meta), "state_dict": state}
    payload["input_size"] = list(meta.input_size)
    payload["mean"], payload["std"] = list(meta.mean), list(meta.std)
    atomic_torch_save(payload, path)
    return meta


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read and validate a checkpoint file without building the model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (was it saved with reid.models.save_checkpoint?)")
    if obj.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {obj.get('version')} is not supported (expected {VERSION})"
        )
    try:
        meta = CheckpointMeta(
            arch=obj["arch"],
            model_cfg=dict(obj["model_cfg"]),
            input_size=tuple(obj["input_size"]),
            mean=tuple(obj["mean"]),
            std=tuple(obj["std"]),
            embedding_dim=int(obj["embedding_dim"]),
            modality=obj["modality"],
            model_id=obj["model_id"],
            extra=dict(obj.get("extra") or {}),
        )
        state = obj["state_dict"]
    except KeyError as e:
        raise CheckpointError(f"{path}: checkpoint lacks field {e.args[0]!r}") from e
    return state, meta


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> tuple[ReIDModel, CheckpointMeta]:
    """Rebuild the model from a checkpoint (in eval mode). ``verify`` re-hashes the weights against ``model_id``."""
    state, meta = read_checkpoint(path)
    cfg = {k: v for k, v in meta.model_cfg.items() if k != "name"}
    model = build_model(meta.arch, **cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit architecture {meta.arch!r}: {e}") from e
    if verify:
        expected = make_model_id(meta.arch, meta.embedding_dim, state)
        if expected != meta.model_id:
            raise CheckpointError(
                f"{path}: weights do not match the stored model_id {meta.model_id!r} (hash gives {expected!r}); "
                "the file was altered"
            )
    return model.eval(), meta

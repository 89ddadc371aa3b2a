"""Model cards' decisions: the open-set rule a model ships with, calibrated on validation identities.

A checkpoint carries it in ``extra["decision"]`` (the cohort as a tensor; ``extra["decision_flip"]`` for the
flip-averaged embeddings, model_id ``<model_id>-flip``); a model that is not a checkpoint of
ours (dlib's face ResNet) carries it as ``reid/face/cards/<model_id>.json`` + ``<model_id>.cohort.npy``.
The entry is a dict: ``rule``, ``beta``, ``threshold``, ``cohort`` ((M, D) float32), and how it was made
(``target_far``, ``measured_far``, ``measured_dir``, ``data``: which identities chose it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from reid.errors import CheckpointError

CARDS_DIR = Path(__file__).resolve().parent / "face" / "cards"


def read_card(model_id: str, folder: str | os.PathLike = CARDS_DIR) -> dict[str, Any] | None:
    """The decision card of ``model_id`` in ``folder`` (None when there is none)."""
    meta = Path(folder) / f"{model_id}.json"
    if not meta.is_file():
        return None
    try:
        card = json.loads(meta.read_text())
        cohort = Path(folder) / f"{model_id}.cohort.npy"
        if cohort.is_file():
            card["cohort"] = np.load(cohort, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta}: unreadable decision card ({e})") from e
    return card


def write_card(model_id: str, card: dict[str, Any], folder: str | os.PathLike = CARDS_DIR) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card = dict(card)
    cohort = card.pop("cohort", None)
    if cohort is not None:
        np.save(folder / f"{model_id}.cohort.npy", np.asarray(cohort, dtype=np.float32), allow_pickle=False)
    path = folder / f"{model_id}.json"
    path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    return path


def flip_model_id(model_id: str, flip: bool) -> str:
    """Flip-averaged embeddings of a model are their own embedding space: ``<model_id>-flip``."""
    return f"{model_id}-flip" if flip else model_id


def _key(flip: bool) -> str:
    return "decision_flip" if flip else "decision"


def attach_to_checkpoint(path: str | os.PathLike, card: dict[str, Any], flip: bool = False) -> str:
    """Store ``card`` as the checkpoint's ``extra["decision"]`` (``"decision_flip"`` for its flip-averaged
    embeddings) atomically. The weights, and so the ``model_id``, are unchanged. Returns the model_id the
    card decides for."""
    import torch

    from reid.models.checkpoint import read_checkpoint
    from reid.utils.io import atomic_torch_save

    read_checkpoint(path)  # validates the file first
    obj = torch.load(path, map_location="cpu", weights_only=True)
    entry = dict(card)
    if entry.get("cohort") is not None:
        entry["cohort"] = torch.from_numpy(np.asarray(entry["cohort"], dtype=np.float32))
    obj["extra"] = {**(obj.get("extra") or {}), _key(flip): entry}
    atomic_torch_save(obj, path)
    return flip_model_id(obj["model_id"], flip)


def card_from_checkpoint_extra(extra: dict[str, Any], flip: bool = False) -> dict[str, Any] | None:
    d = extra.get(_key(flip))
    if not d:
        return None
    d = dict(d)
    if d.get("cohort") is not None and not isinstance(d["cohort"], np.ndarray):
        d["cohort"] = np.asarray(
            d["cohort"].numpy() if hasattr(d["cohort"], "numpy") else d["cohort"], np.float32
        )
    return d

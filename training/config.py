"""YAML configs with ``_BASE_`` inheritance (as detectron2 / fast-reid) and ``key.sub=value`` overrides.

A config file may name one or more bases (``_BASE_: ../base.yaml`` or a list), resolved relative to the file;
the file's own keys are merged over its bases recursively (dicts merge, everything else replaces). Command-line
overrides ``optimizer.lr=0.01`` are parsed as YAML values. Every key must exist in ``configs/base.yaml``'s
schema (the defaults below), so a typo is an error that names the key and the file, never silently ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from reid.errors import ConfigError

# The schema: every allowed key with its default. Dict-valued entries listed in FREE_KEYS take any sub-keys.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "deterministic": False,
    "output_dir": "runs/default",
    "modality": "body",
    "data": {
        "dataset": "market1501",
        "root": "../shared/data/cuhk03-np",
        "kwargs": {},
        # Market-layout train folders with more views of the same identities (e.g. detector boxes): they join
        # training; validation identities are removed from them too.
        "extra_train": [],
        # Identities held out of training (a count, or a fraction < 1) to choose the checkpoint: best.pt is
        # picked on them, never on the test split. 0 = no validation (best.pt then follows the test split).
        "val_identities": 0,
        "val_seed": 0,
        # hold out first exactly what val_identities=<this> would (same seed), then more: an earlier model's
        # validation identities stay untrained, so the two compare on them
        "val_extends": 0,
        "p": 16,
        "k": 4,
        "workers": 2,
        "eval_batch_size": 128,
    },
    "transforms": {},
    "model": {
        "name": "resnet50",
        "embedding_dim": None,
        "pooling": "avg",
        "gem_p": 3.0,
        "bnneck": True,
        "last_stride": 1,
        "pretrained": None,
    },
    "losses": [],
    "optimizer": {
        "name": "adam",
        "lr": 3.5e-4,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "backbone_lr_mult": 1.0,
    },
    "scheduler": {
        "name": "warmup_multistep",
        "warmup_epochs": 10,
        "warmup_factor": 0.01,
        "milestones": [40, 70],
        "gamma": 0.1,
        "min_lr_factor": 0.01,
    },
    "train": {
        "epochs": 120,
        "max_minutes": None,
        # With max_minutes: the schedule follows elapsed training time (warmup and cosine end exactly when the
        # budget does) and training stops mid-epoch at the budget. For fixed-budget CPU runs.
        "schedule_by_time": False,
        "iters_per_epoch": None,
        "grad_clip": None,
        "amp": True,
        # Mixed precision: "auto" is float16 with a grad scaler on CUDA and none on CPU; "bfloat16" autocasts on
        # any device (no scaler: bf16 keeps fp32's exponent range), 1.3x faster MobileNetV2 steps on a CPU with
        # AVX-512 bf16 (benchmarks/train_step_speed.py). Weights, losses and the optimiser stay float32.
        "amp_dtype": "auto",
        # NHWC activations: the same numbers, and 1.5x faster MobileNetV2 steps on this 2-core CPU (oneDNN's
        # depthwise and 1x1 convolutions prefer it; benchmarks/train_step_speed.py).
        "channels_last": True,
        "freeze_backbone_epochs": 0,
        # Start from a whole model exported by this trainer (fast-reid's MODEL.WEIGHTS): every backbone and head
        # tensor is loaded; the classifier, part of the loss, starts afresh. Refused if that model trained on any
        # identity this run validates on.
        "init_weights": None,
        "log_every": 20,
        "checkpoint_every": 1,
    },
    "eval": {
        "type": "rank",  # training.evaluators.EVALUATORS: rank, lfw
        "every": 10,
        "metric": "mAP",
        "distance": "cosine",
        "flip": False,
        "rerank": False,
        "lfw_root": None,
        # LFW only: keep the centre fraction of each image before resizing, so evaluation faces are framed like
        # the training crops (celeba-faces: 1.25 x the detector box; LFW 150x150: face ~100 px -> 0.83).
        "lfw_center_crop": None,
        "max_queries": None,
        # With data.val_identities the validation split chooses best.pt; the test split is evaluated beside
        # it (metrics logged as test/<name>) only when report_test is true, and never chooses.
        "report_test": True,
    },
}
FREE_KEYS = {"transforms", "data.kwargs"}


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level")
    return data


def load_raw(path: str | Path, _stack: tuple[Path, ...] = ()) -> tuple[dict, dict[str, Path]]:
    """Resolve ``_BASE_`` chains. Returns the merged dict and, for each dotted key, the file that set it last."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"_BASE_ cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop("_BASE_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    origin: dict[str, Path] = {}
    for b in bases:
        bdata, borigin = load_raw(path.parent / b, (*_stack, path))
        merged = _merge(merged, bdata)
        origin.update(borigin)
    merged = _merge(merged, data)
    for key in _dotted_keys(data):
        origin[key] = path
    return merged, origin


def _dotted_keys(d: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, Mapping):
            keys += _dotted_keys(v, full + ".")
    return keys


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    """``["optimizer.lr=0.01", "model.name=osnet_x0_25"]`` -> cfg with those values (YAML-parsed)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
        parts = key.strip().split(".")
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return cfg


def validate(cfg: Mapping, origin: Mapping[str, Path] | None = None) -> None:
    """Every key must be in the schema (``DEFAULTS``); the error names the key and the file that set it."""

    def walk(node: Mapping, schema: Mapping, prefix: str) -> None:
        for k, v in node.items():
            full = f"{prefix}{k}"
            if k not in schema:
                where = f" (set in {origin[full]})" if origin and full in origin else " (command line)"
                known = ", ".join(sorted(schema))
                raise ConfigError(f"unknown config key {full!r}{where}; known keys here: {known}")
            if isinstance(schema[k], dict) and full not in FREE_KEYS:
                if not isinstance(v, Mapping):
                    raise ConfigError(f"config key {full!r} must be a mapping, got {v!r}")
                walk(v, schema[k], full + ".")

    walk(cfg, DEFAULTS, "")
    if not isinstance(cfg.get("losses", []), list):
        raise ConfigError("config key 'losses' must be a list of loss terms")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Load a config file with its bases and overrides, fill in defaults, validate."""
    raw, origin = load_raw(path)
    raw = apply_overrides(raw, overrides)
    validate(raw, origin)
    cfg = _merge(DEFAULTS, raw)
    if not cfg["losses"]:
        raise ConfigError(f"{path}: 'losses' is empty; give at least one loss term")
    if cfg["modality"] not in ("body", "face"):
        raise ConfigError(f"modality must be 'body' or 'face', got {cfg['modality']!r}")
    return cfg


def dump_config(cfg: Mapping, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    return path

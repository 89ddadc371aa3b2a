"""Optimisers and learning-rate schedules by name, with parameter groups for the backbone, head and losses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reid.errors import ConfigError
from reid.utils.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULES: Registry[Any] = Registry("scheduler")


@OPTIMIZERS.register("sgd")
def sgd(
    groups, lr: float, weight_decay: float = 5e-4, momentum: float = 0.9, **_: Any
) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)


@OPTIMIZERS.register("adam")
def adam(groups, lr: float, weight_decay: float = 5e-4, **_: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(groups, lr: float, weight_decay: float = 0.05, **_: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def param_groups(model: nn.Module, loss: nn.Module, cfg: Mapping[str, Any]) -> list[dict]:
    """Backbone (lr x ``backbone_lr_mult``), head, and the losses' own parameters (classifiers, centers; a
    term's ``lr`` gives it its own learning rate, e.g. center loss)."""
    lr = float(cfg["lr"])
    groups = [
        {
            "params": [p for p in model.backbone.parameters() if p.requires_grad],
            "lr": lr * float(cfg.get("backbone_lr_mult", 1.0)),
            "name": "backbone",
        },
        {"params": [p for p in model.head.parameters() if p.requires_grad], "lr": lr, "name": "head"},
    ]
    groups += loss.param_groups(lr) if hasattr(loss, "param_groups") else []
    for g in groups:
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, loss: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = cfg.pop("name")
    groups = param_groups(model, loss, cfg)
    opt = OPTIMIZERS.get(name)(groups, **{k: v for k, v in cfg.items() if k != "backbone_lr_mult"})
    for g in opt.param_groups:  # SGD/Adam drop unknown keys? keep the name for logging
        g.setdefault("name", "group")
    return opt


@SCHEDULES.register("warmup_multistep")
def warmup_multistep(
    epochs: int,
    warmup_epochs: int = 10,
    warmup_factor: float = 0.01,
    milestones=(40, 70),
    gamma: float = 0.1,
    **_,
):
    """Linear warm-up from ``warmup_factor`` x lr, then x ``gamma`` at each milestone (BoT). Per-epoch factor."""
    milestones = sorted(int(m) for m in milestones)

    def factor(epoch: float) -> float:
        if epoch < warmup_epochs:
            return warmup_factor + (1 - warmup_factor) * epoch / max(warmup_epochs, 1)
        return gamma ** sum(epoch >= m for m in milestones)

    return factor


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(
    epochs: int, warmup_epochs: int = 10, warmup_factor: float = 0.01, min_lr_factor: float = 0.01, **_
):
    """Linear warm-up, then cosine decay to ``min_lr_factor`` x lr at the last epoch."""

    def factor(epoch: float) -> float:
        if epoch < warmup_epochs:
            return warmup_factor + (1 - warmup_factor) * epoch / max(warmup_epochs, 1)
        t = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1)
        return min_lr_factor + (1 - min_lr_factor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


class EpochScheduler:
    """Sets every group's lr to ``initial_lr * factor(epoch + fraction)``; state is just the position."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], epochs: int) -> None:
        cfg = dict(cfg)
        name = cfg.pop("name")
        if name not in SCHEDULES:
            raise ConfigError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULES.names())}")
        self.factor = SCHEDULES.get(name)(epochs, **cfg)
        self.optimizer = optimizer
        self.position = 0.0

    def step_to(self, epoch_position: float) -> None:
        self.position = float(epoch_position)
        f = self.factor(self.position)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping) -> None:
        self.step_to(state["position"])

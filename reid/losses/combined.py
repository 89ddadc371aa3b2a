"""Weighted sums of losses built from config, each term reported separately.

Example (the Bag-of-Tricks re-ID recipe)::

    terms:
      - {name: cross_entropy, weight: 1.0, label_smoothing: 0.1, input: bn_features}
      - {name: triplet, weight: 1.0, margin: 0.3, reduction: mean, miner: batch_hard,
         distance: {name: euclidean, normalize_embeddings: false}, input: features}
      - {name: center, weight: 0.0005, input: features, lr: 0.5}
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reid.distances import build_distance
from reid.errors import ConfigError
from reid.losses.base import LOSSES
from reid.miners import BaseMiner, build_miner

INPUTS = ("features", "bn_features")


@dataclass
class LossTerm:
    name: str
    weight: float
    loss: nn.Module
    miner: BaseMiner | None
    input: str
    lr: float | None = None  # own learning rate for the loss's parameters (e.g. center loss)


class CombinedLoss(nn.Module):
    """``total = sum_i weight_i * loss_i(outputs[input_i], labels, miner_i(...))``.

    ``forward`` returns ``(total, values)`` where ``values`` maps ``loss/<name>`` to each unweighted term and
    ``stats/<name>/<key>`` to the loss's and miner's statistics (active triplets, distances, accuracy).
    """

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("losses: at least one loss term is required")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"losses: term names must be unique, got {names} (set 'label' to tell them apart)"
            )
        self.terms = list(terms)
        self.losses = nn.ModuleDict({t.name: t.loss for t in terms})

    def forward(
        self, outputs: Mapping[str, torch.Tensor] | torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = None
        values: dict[str, float] = {}
        for t in self.terms:
            if isinstance(outputs, torch.Tensor):
                emb = outputs
            elif t.input in outputs:
                emb = outputs[t.input]
            else:
                raise ConfigError(
                    f"losses.{t.name}.input {t.input!r} is not a model output ({', '.join(outputs)})"
                )
            indices = t.miner(emb, labels) if t.miner is not None else None
            value = t.loss(emb, labels, indices)
            total = t.weight * value if total is None else total + t.weight * value
            values[f"loss/{t.name}"] = float(value.detach())
            for k, v in getattr(t.loss, "stats", {}).items():
                values[f"stats/{t.name}/{k}"] = v
            if t.miner is not None:
                for k, v in t.miner.stats.items():
                    values[f"stats/{t.name}/miner_{k}"] = v
        values["loss/total"] = float(total.detach())
        return total, values

    def param_groups(self, default_lr: float) -> list[dict]:
        """Parameters of the losses (classifiers, centers) as optimizer groups; ``lr`` per term if given."""
        groups = []
        for t in self.terms:
            params = [p for p in t.loss.parameters() if p.requires_grad]
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": t.lr if t.lr is not None else default_lr,
                        "name": f"loss/{t.name}",
                    }
                )
        return groups


def build_loss(
    spec: Mapping[str, Any], num_classes: int | None = None, embedding_size: int | None = None
) -> nn.Module:
    """One loss from ``{"name": ..., **kwargs}``; ``num_classes``/``embedding_size`` are filled in where needed."""
    spec = dict(spec)
    name = spec.pop("name")
    cls = LOSSES.get(name)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(spec) - set(params))
    if unknown:
        raise ConfigError(
            f"loss {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(params)}"
        )
    for key, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
        if key in params and key not in spec:
            if value is None:
                raise ConfigError(f"loss {name!r} needs {key}")
            spec[key] = value
    if "distance" in spec:
        spec["distance"] = build_distance(spec["distance"])
    return cls(**spec)


def build_combined_loss(
    terms: Sequence[Mapping[str, Any]], num_classes: int | None = None, embedding_size: int | None = None
) -> CombinedLoss:
    """Build a :class:`CombinedLoss` from a list of term configs (see the module docstring)."""
    built = []
    for i, raw in enumerate(terms):
        spec = dict(raw)
        if "name" not in spec:
            raise ConfigError(f"losses[{i}]: 'name' is required (one of {', '.join(LOSSES.names())})")
        weight = float(spec.pop("weight", 1.0))
        inp = spec.pop("input", "features")
        if inp not in INPUTS:
            raise ConfigError(f"losses[{i}].input must be one of {INPUTS}, got {inp!r}")
        miner_spec = spec.pop("miner", None)
        lr = spec.pop("lr", None)
        label = spec.pop("label", spec["name"])
        loss = build_loss(spec, num_classes, embedding_size)
        miner = build_miner(miner_spec, getattr(loss, "distance", None)) if miner_spec else None
        built.append(LossTerm(label, weight, loss, miner, inp, lr))
    return CombinedLoss(built)

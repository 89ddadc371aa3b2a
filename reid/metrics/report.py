"""Evaluation reports: a JSON of all numbers, CMC and ROC curves as PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_json(path: str | Path, results: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    path.write_text(json.dumps(results, indent=2, default=default))
    return path


def plot_cmc(path: str | Path, curves: dict[str, np.ndarray], max_rank: int = 20) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, cmc in curves.items():
        r = np.arange(1, min(max_rank, len(cmc)) + 1)
        ax.plot(r, np.asarray(cmc)[: len(r)] * 100, marker="o", ms=3, label=name)
    ax.set(xlabel="rank", ylabel="matching rate (%)", title="CMC", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_roc(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (far, tar) in curves.items():
        ax.plot(np.maximum(far, 1e-5), tar * 100, label=name)
    ax.set(
        xscale="log", xlabel="false accept rate", ylabel="true accept rate (%)", title="ROC", ylim=(0, 100)
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

"""Real-data check of the losses: a few hundred steps on CUHK03-NP train with each main loss must lower the loss
and raise train-batch retrieval accuracy (rank-1 of each image among the other images of a fresh P x K batch).

Examples:
    python benchmarks/loss_sanity.py                          # all losses, 200 steps each
    python benchmarks/loss_sanity.py --losses triplet arcface --steps 100
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.data import ImageDataset, PKSampler, build_dataset, build_transforms
from reid.losses import build_combined_loss
from reid.models import build_model

RECIPES = {
    "cross_entropy": [{"name": "cross_entropy", "label_smoothing": 0.1, "input": "bn_features"}],
    "triplet": [
        {
            "name": "triplet",
            "margin": 0.3,
            "miner": "batch_hard",
            "reduction": "mean",
            "distance": {"name": "euclidean", "normalize_embeddings": False},
        }
    ],
    "contrastive": [{"name": "contrastive", "pos_margin": 0.0, "neg_margin": 1.0}],
    "arcface": [{"name": "arcface", "margin": 0.3, "scale": 30.0, "input": "bn_features"}],
    "cosface": [{"name": "cosface", "margin": 0.25, "scale": 30.0, "input": "bn_features"}],
    "bot": [
        {"name": "cross_entropy", "label_smoothing": 0.1, "input": "bn_features"},
        {
            "name": "triplet",
            "margin": 0.3,
            "miner": "batch_hard",
            "reduction": "mean",
            "distance": {"name": "euclidean", "normalize_embeddings": False},
        },
        {"name": "center", "weight": 0.0005, "lr": 0.5},
    ],
}


def batch_rank1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Rank-1 of each image among the rest of the batch (cosine on eval-mode embeddings)."""
    model.eval()
    with torch.no_grad():
        f = torch.nn.functional.normalize(model(images), dim=1)
    model.train()
    sim = f @ f.T
    sim.fill_diagonal_(-2)
    return float((labels[sim.argmax(1)] == labels).float().mean())


def run(name: str, ds, args) -> dict:
    torch.manual_seed(0)
    model = build_model("mobilenetv2", pretrained="deepsort-mobilenetv2", embedding_dim=256)
    train = ImageDataset(
        ds.train, build_transforms({"input_size": [128, 64], "random_erasing": 0.0}, train=True)
    )
    sampler = PKSampler(train.labels, p=args.p, k=args.k, seed=0)
    loader = DataLoader(
        train, batch_size=args.p * args.k, sampler=sampler, drop_last=True, num_workers=args.workers
    )
    loss = build_combined_loss(
        RECIPES[name], num_classes=train.num_classes, embedding_size=model.embedding_dim
    )
    groups = [{"params": model.parameters(), "lr": args.lr}, *loss.param_groups(args.lr)]
    opt = torch.optim.Adam(groups, lr=args.lr, weight_decay=5e-4)
    # fixed evaluation batches drawn from a different seed
    ev_sampler = PKSampler(train.labels, p=args.p, k=args.k, seed=123)
    ev_loader = DataLoader(
        ImageDataset(ds.train, build_transforms({"input_size": [128, 64]}, train=False)),
        batch_size=args.p * args.k,
        sampler=ev_sampler,
        drop_last=True,
    )
    ev_batches = [b for _, b in zip(range(4), ev_loader)]

    def evaluate() -> float:
        return sum(batch_rank1(model, x, y) for x, y, *_ in ev_batches) / len(ev_batches)

    r1_before = evaluate()
    losses, step, t0 = [], 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(step)
        for x, y, *_ in loader:
            total, values = loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(values["loss/total"])
            step += 1
            if step >= args.steps:
                break
    k = max(len(losses) // 10, 1)
    return {
        "loss": name,
        "first": sum(losses[:k]) / k,
        "last": sum(losses[-k:]) / k,
        "r1_before": r1_before,
        "r1_after": evaluate(),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cuhk03-np"))
    ap.add_argument("--losses", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3.5e-4)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds = build_dataset("cuhk03-np", args.data)
    print(describe())
    print(
        f"cuhk03-np train ({len(ds.train)} images, {ds.num_train_pids} ids), mobilenetv2 (ImageNet, deep-sort "
        f"weights) + 256-d head, 128x64, P={args.p} K={args.k}, Adam lr {args.lr}, {args.steps} steps per loss"
    )
    print(
        f"{'loss':<14} {'loss first 10%':>15} {'loss last 10%':>14} {'batch R1 before':>16} {'after':>7} {'time s':>7}"
    )
    for name in args.losses:
        r = run(name, ds, args)
        print(
            f"{r['loss']:<14} {r['first']:15.4f} {r['last']:14.4f} {r['r1_before']:16.2%} {r['r1_after']:7.2%} "
            f"{r['seconds']:7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

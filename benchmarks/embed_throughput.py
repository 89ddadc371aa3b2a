"""Images/second of each backbone's embedding forward pass on this machine.

Examples:
    python benchmarks/embed_throughput.py                         # all backbones, 256x128, batch 64
    python benchmarks/embed_throughput.py --models osnet_x0_25 mobilenetv2 --iters 5
    python benchmarks/embed_throughput.py --height 112 --width 112 --batch 128
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.models import MODELS, build_model


def measure(name: str, batch: int, h: int, w: int, warmup: int, iters: int) -> tuple[float, float, int]:
    model = build_model(name).eval()
    x = torch.randn(batch, 3, h, w)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    params = sum(p.numel() for p in model.parameters())
    return batch / median, median * 1000 / batch, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS.names())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(describe())
    print(
        f"input {args.height}x{args.width}, batch {args.batch}, float32, torch.inference_mode, median of {args.iters}"
    )
    print(f"{'model':<20} {'params (M)':>10} {'images/s':>10} {'ms/image':>9}")
    for name in args.models:
        ips, ms, params = measure(name, args.batch, args.height, args.width, args.warmup, args.iters)
        print(f"{name:<20} {params / 1e6:10.2f} {ips:10.1f} {ms:9.2f}", flush=True)


if __name__ == "__main__":
    main()

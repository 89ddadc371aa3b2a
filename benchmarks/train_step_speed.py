"""One training step of a re-ID recipe on the CPU, by memory layout and precision, side by side in one run.

A step is what the trainer does per batch: forward in train mode (BNNeck features), cross-entropy on a
classifier, backward, Adam. The rows differ only in the activations' memory layout (NCHW, the PyTorch default,
or channels-last NHWC, ``train.channels_last``) and in bfloat16 autocast. Inputs are random tensors of the
recipe's size (data loading is not timed); each row warms up 2 steps and then times ``--steps``; rows run in
ABBA order (all rows, then all rows reversed) so a change in the machine's load hits every row alike.

Examples:
    python benchmarks/train_step_speed.py                      # MobileNetV2 192x96, P x K = 64, both cores
    python benchmarks/train_step_speed.py --threads 1 --steps 6
    python benchmarks/train_step_speed.py --model resnet50 --size 256 128 --batch 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.models.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--size", type=int, nargs=2, default=[192, 96], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=377)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per row and round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, embedding_dim=256, last_stride=1, pooling="gem").train()
    head = torch.nn.Linear(256, args.classes)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-4)
    x = torch.randn(args.batch, 3, *args.size)
    y = torch.randint(0, args.classes, (args.batch,))

    def step(layout: torch.memory_format, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x.contiguous(memory_format=layout))["bn_features"]
            loss = torch.nn.functional.cross_entropy(head(out.float()), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = [
        ("NCHW (contiguous), fp32", torch.contiguous_format, False),
        ("channels-last, fp32", torch.channels_last, False),
        ("NCHW, bf16 autocast", torch.contiguous_format, True),
        ("channels-last, bf16 autocast", torch.channels_last, True),
    ]
    times: dict[str, list[float]] = {name: [] for name, *_ in rows}
    for order in (rows, rows[::-1]):
        for name, layout, bf16 in order:
            model.to(memory_format=layout)
            for _ in range(2):
                step(layout, bf16)
            t = time.perf_counter()
            for _ in range(args.steps):
                step(layout, bf16)
            times[name].append((time.perf_counter() - t) / args.steps)
    print(describe())
    print(f"{args.model} {args.size[0]}x{args.size[1]}, batch {args.batch}, {args.threads} thread(s), "
          f"{args.steps} steps x 2 rounds (ABBA)")  # fmt: skip
    base = sum(times[rows[0][0]]) / 2
    print(f"{'layout / precision':<32} {'s/step':>8} {'img/s':>7} {'vs NCHW fp32':>12}")
    for name, *_ in rows:
        s = sum(times[name]) / 2
        print(f"{name:<32} {s:>8.3f} {args.batch / s:>7.1f} {base / s:>11.2f}x")


if __name__ == "__main__":
    main()

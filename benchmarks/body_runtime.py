"""The body model on PyTorch eager vs ONNX Runtime, side by side in one run: embedding latency (batch 1) and
throughput (batch 32) on real CUHK03-NP crops, and REST ``POST /identify`` latency of a real ``reid-serve`` on
each runtime over a gallery of a few thousand body templates.

1. Embedding: ``--crops`` crops of CUHK03-NP's test gallery, decoded to RGB arrays beforehand (JPEG decoding is
   not timed; resizing, normalising, the forward pass and L2 normalisation are), in one process, one runtime
   at a time, in four rounds in ABBA order so that a change in the machine's load hits every row alike
   (interleaving call by call is unfair: each runtime's idle threads spin for a moment after a call and take
   the cores from the other).
2. REST: a gallery database of ``--templates`` body templates (the real embeddings of ``--real`` CUHK03-NP
   identities, so queries have true matches, plus random unit vectors), served by four ``reid-serve``
   processes (``python -m services.serve``): ``--body-runtime torch`` (PyTorch's default threads),
   ``--body-runtime torch`` with ``OMP_NUM_THREADS=1``, ``--body-runtime onnx`` (``REID_ONNX_THREADS`` as given
   by ``--threads``) and ``--body-runtime onnx`` with ``REID_ONNX_THREADS=1``, started one after the other; then ``--requests`` sequential identify requests with real query crops (JPEG uploads) go to each
   server in turn.

Thread counts: PyTorch uses ``torch.get_num_threads()`` (all cores by default); ONNX Runtime uses
``REID_ONNX_THREADS`` intra-op threads (default min(2, cores)), one inter-op thread. Each table also has a
one-thread row per runtime: on a small shared machine one thread can beat two (a thread waiting for a busy
core holds up the whole operator).

Measured on the 2-core build machine (AMD EPYC, torch 2.14.1, onnxruntime 1.32.0), shared with other work
(load average 3 to 5 during the runs), shipped mobilenetv2_cuhk03 model, 5,000 body templates; two runs
ten minutes apart (same code except the fourth REST row) show how much the load moves the figures:

    run            b1 p50 ms (PT 2t / PT 1t / ORT 2t / ORT 1t)   b32 img/s (same order)    REST p50 ms (PT 2t / PT 1t / ORT 2t / ORT 1t)
    19:45, load 4  94.0 / 16.9 / 15.5 / 7.8                       28.6 / 55.2 / 82.3 / 133  67.5 / 37.9 / 35.2 / -
    19:48, load 3  18.2 / 14.7 / 5.1 / 7.6                        66.0 / 71.2 / 233 / 142   45.2 / 28.3 / 26.3 / 30.0

ONNX Runtime is faster than PyTorch at the same thread count in every row; PyTorch on two threads (what the
services ran before) has batch-1 p99 of 0.9 to 1.6 s here. Whether one or two ONNX Runtime threads is better
depends on the load; the default stays min(2, cores) (REID_ONNX_THREADS).

Examples:
    python benchmarks/body_runtime.py
    python benchmarks/body_runtime.py --templates 5000 --requests 200 --crops 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parents[1]

KEY = "body-runtime-bench"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q))


def embedding_bench(checkpoint: str, data: Path, n_crops: int, iters1: int, batches32: int, threads: int):
    """Each runtime at the thread count the services give it and at one thread, measured in rounds (ABBA
    order) so that the machine's changing load hits every row alike; one process, one runtime at a time."""
    import torch

    from reid.embedder import load_embedder
    from reid.images import read_image, to_rgb_array

    files = sorted((data / "bounding_box_test").glob("*.jpg"))
    files = files[:: max(1, len(files) // n_crops)][:n_crops]
    crops = [to_rgb_array(read_image(f)) for f in files]
    torch_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as cache:
        pt = load_embedder(checkpoint, "torch", device="cpu")
        rows = [("PyTorch", torch_threads, pt)]
        if torch_threads != 1:
            rows.append(("PyTorch", 1, pt))
        for n in sorted({threads, 1}, reverse=True):
            rows.append(("ONNX Runtime", n, load_embedder(checkpoint, "onnx", threads=n, cache_dir=cache)))
        # the vectors agree (same model_id, same ranking): the worst cosine over the crops
        a = pt.embed(crops, batch_size=32)
        b = rows[-1][2].embed(crops, batch_size=32)
        worst = float((a * b).sum(1).min())
        same_id = len({e.model_id for _, _, e in rows}) == 1
        lat: dict[int, list[float]] = {i: [] for i in range(len(rows))}
        busy: dict[int, float] = dict.fromkeys(range(len(rows)), 0.0)
        rounds = 4
        for r in range(rounds):
            order = list(range(len(rows)))
            for i in order if r % 2 == 0 else order[::-1]:
                label, n, e = rows[i]
                torch.set_num_threads(n if label == "PyTorch" else torch_threads)
                for j in range(3):  # warm-up of this configuration
                    e.embed([crops[j]], batch_size=1)
                for k in range(r * iters1 // rounds, (r + 1) * iters1 // rounds):
                    t = time.perf_counter()
                    e.embed([crops[k % len(crops)]], batch_size=1)
                    lat[i].append((time.perf_counter() - t) * 1000)
                for b in range(r * batches32 // rounds, (r + 1) * batches32 // rounds):
                    batch = [crops[(b * 32 + j) % len(crops)] for j in range(32)]
                    t = time.perf_counter()
                    e.embed(batch, batch_size=32)
                    busy[i] += time.perf_counter() - t
        torch.set_num_threads(torch_threads)
    print(
        f"\nembedding: {len(crops)} CUHK03-NP crops (pre-decoded RGB; resize, normalise, forward, L2 timed), "
        f"{iters1} calls of batch 1 and {batches32} batches of 32 per row, in {rounds} rounds (ABBA); "
        f"PyTorch's default {torch_threads} intra-op threads, ONNX Runtime's default {threads} "
        f"(REID_ONNX_THREADS); same model_id {rows[0][2].model_id}: {same_id}; worst cosine ONNX vs "
        f"PyTorch {worst:.7f}; {load()}"
    )
    print(
        f"{'runtime':<14} {'threads':>7} {'b1 p50 ms':>10} {'b1 p99 ms':>10} {'b1 mean ms':>11} "
        f"{'b32 img/s':>10} {'vs PyTorch default':>19}"
    )
    base = 32 * batches32 / busy[0]
    for i, (label, n, _) in enumerate(rows):
        ips = 32 * batches32 / busy[i]
        ms = lat[i]
        print(
            f"{label:<14} {n:>7} {pct(ms, 50):>10.2f} {pct(ms, 99):>10.2f} {np.mean(ms):>11.2f} {ips:>10.1f} "
            f"{ips / base:>6.2f}x img/s, {pct(lat[0], 50) / pct(ms, 50):.2f}x b1 p50"
        )


def start_server(db: Path, port: int, checkpoint: str, runtime: str, log: Path, env: dict):
    """A ``reid-serve`` (``python -m services.serve``) on ``runtime``; returns the process and the intra-op
    thread count its body model says it runs with."""
    import re

    import httpx

    cmd = [sys.executable, "-m", "services.serve", "--db", str(db), "--port", str(port)]
    cmd += ["--body-checkpoint", checkpoint, "--body-runtime", runtime]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT)
    t = time.perf_counter()
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/ready", headers={"X-API-Key": KEY}, timeout=2)
            r.raise_for_status()
            break
        except httpx.HTTPError:
            if server.poll() is not None:
                raise SystemExit(
                    f"reid-serve --body-runtime {runtime} exited at start-up; see {log}"
                ) from None
            time.sleep(0.5)
    lines = [ln.split(": ", 1)[-1] for ln in log.read_text().splitlines() if "body model" in ln]
    said = lines[-1] if lines else "(no runtime log line)"
    print(f"reid-serve --body-runtime {runtime} ready in {time.perf_counter() - t:.1f} s: {said}")
    threads = re.search(r"(\d+) intra-op threads", said)
    return server, int(threads.group(1)) if threads else -1


def rest_bench(args) -> None:
    import httpx

    from benchmarks.load_identify import prepare

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"g{args.templates}.db"
    images = prepare(db, args.checkpoint, Path(args.data), args.templates, args.real)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this checkout, whatever the venv's editable install points at
        "REID_API_KEYS": json.dumps([{"key": KEY, "name": "bench", "scopes": ["read"]}]),
        "REID_ONNX_THREADS": str(args.threads),
        "REID_ONNX_CACHE_DIR": str(work / "onnx"),
    }
    # (label, --body-runtime, extra environment): each runtime as the services run it and on one thread
    variants = [("PyTorch", "torch", {}), ("PyTorch", "torch", {"OMP_NUM_THREADS": "1"})]
    variants.append(("ONNX Runtime", "onnx", {}))
    if args.threads != 1:
        variants.append(("ONNX Runtime", "onnx", {"REID_ONNX_THREADS": "1"}))
    servers, urls, threads = [], [], []
    try:
        for i, (_, runtime, extra) in enumerate(variants):
            port = args.port + i
            server, n = start_server(
                db, port, args.checkpoint, runtime, work / f"serve-{i}-{runtime}.log", {**env, **extra}
            )
            servers.append(server)
            threads.append(n)
            urls.append(f"http://127.0.0.1:{port}")
        lat: list[list[float]] = [[] for _ in urls]
        known = [0] * len(urls)
        with httpx.Client(timeout=30) as client:

            def ask(k: int, i: int) -> tuple[float, bool]:
                t = time.perf_counter()
                r = client.post(
                    f"{urls[k]}/identify",
                    headers={"X-API-Key": KEY},
                    data={"modality": "body"},
                    files={"image": (f"q{i}.jpg", images[i % len(images)], "image/jpeg")},
                )
                ms = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                return ms, bool(r.json()["known"])

            for i in range(10):  # warm-up
                for k in range(len(urls)):
                    ask(k, i)
            for i in range(args.requests):
                for k in range(len(urls)):
                    ms, hit = ask(k, i)
                    lat[k].append(ms)
                    known[k] += hit
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(30)
    print(
        f"\nREST POST /identify (body, JPEG upload of a real CUHK03-NP query crop): {args.requests} sequential "
        f"requests per server, the servers in turn; {args.templates:,} body templates ({args.real} real "
        f"identities); one client, loopback; {load()}"
    )
    print(
        f"{'runtime':<14} {'threads':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'known':>9}"
    )
    for k, (label, _, _) in enumerate(variants):
        ms = lat[k]
        print(
            f"{label:<14} {threads[k]:>7} {pct(ms, 50):>8.1f} {pct(ms, 90):>8.1f} {pct(ms, 99):>8.1f} "
            f"{np.mean(ms):>8.1f} {known[k]:>5}/{len(ms):<3}"
        )


def main() -> None:
    from reid.onnx_embedder import default_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "body" / "mobilenetv2_cuhk03.pt"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cuhk03-np"))
    p.add_argument("--crops", type=int, default=256)
    p.add_argument("--iters", type=int, default=200, help="batch-1 calls per runtime")
    p.add_argument("--batches", type=int, default=16, help="batches of 32 per runtime")
    p.add_argument("--threads", type=int, default=default_threads(), help="ONNX Runtime intra-op threads")
    p.add_argument("--templates", type=int, default=5000)
    p.add_argument("--real", type=int, default=200, help="CUHK03-NP identities enrolled with real crops")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--workdir", default="/tmp/body_runtime")
    p.add_argument("--port", type=int, default=8791, help="first of four ports")
    p.add_argument("--skip-rest", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(describe())
    print(f"start: {load()} (a shared machine: other processes run beside this benchmark)")
    embedding_bench(args.checkpoint, Path(args.data), args.crops, args.iters, args.batches, args.threads)
    if not args.skip_rest:
        rest_bench(args)


if __name__ == "__main__":
    main()

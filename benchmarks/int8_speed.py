"""INT8 inference on CPU: speed and accuracy of PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8
(dynamic quantisation) for one embedding checkpoint, on a Market-layout dataset's query/gallery.

Examples:
    python benchmarks/int8_speed.py --checkpoint runs/cuhk03_light/best.pt
    python benchmarks/int8_speed.py --checkpoint m.pt --data ../shared/data/cuhk03-np --max-gallery 1000
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.data import build_dataset
from reid.embedder import Embedder
from reid.metrics import compute_distance_matrix, evaluate_rank
from training.export import OnnxEmbedder, calibration_batch, export_onnx, quantize_onnx_int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cuhk03-np"))
    ap.add_argument("--max-gallery", type=int, default=None, help="evaluate on a prefix of the gallery")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calibration", type=int, default=256, help="training images used to calibrate INT8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds = build_dataset("cuhk03-np", args.data)
    q, g = ds.query, ds.gallery[: args.max_gallery] if args.max_gallery else ds.gallery
    qids = {r.pid for r in g}
    q = [r for r in q if r.pid in qids]
    with tempfile.TemporaryDirectory() as d:
        fp32 = export_onnx(args.checkpoint, Path(d) / "model.onnx")
        # calibration from the training split only (never the evaluated query/gallery images)
        train = ds.train[:: max(1, len(ds.train) // args.calibration)][: args.calibration]
        calib = calibration_batch(args.checkpoint, [r.path for r in train])
        int8 = quantize_onnx_int8(fp32, Path(d) / "model.int8.onnx", calib, method="static")
        dyn = quantize_onnx_int8(fp32, Path(d) / "model.int8dyn.onnx", method="dynamic")
        embedders = [
            ("PyTorch fp32", Embedder.from_checkpoint(args.checkpoint, device="cpu")),
            ("ONNX Runtime fp32", OnnxEmbedder(fp32, args.checkpoint)),
            (f"ONNX Runtime INT8 static ({len(calib)} calib.)", OnnxEmbedder(int8, args.checkpoint)),
            ("ONNX Runtime INT8 dynamic", OnnxEmbedder(dyn, args.checkpoint)),
        ]
        sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
        rows = []
        for name, e in embedders:
            t = time.perf_counter()
            qf = e.embed([r.path for r in q], batch_size=args.batch)
            gf = e.embed([r.path for r in g], batch_size=args.batch)
            secs = time.perf_counter() - t
            res = evaluate_rank(
                compute_distance_matrix(qf, gf, "cosine"),
                np.array([r.pid for r in q]),
                np.array([r.pid for r in g]),
                np.array([r.camid for r in q]),
                np.array([r.camid for r in g]),
            )
            rows.append((name, (len(q) + len(g)) / secs, res.rank1, res.mAP))
    print(describe())
    print(
        f"{args.checkpoint}: {len(q)} queries x {len(g)} gallery (cuhk03-np); ONNX fp32 {sizes['fp32'] / 1e6:.1f} MB,"
        f" INT8 {sizes['int8'] / 1e6:.1f} MB; images/s include decoding and resizing"
    )
    print(f"{'runtime':<36} {'images/s':>9} {'speed-up':>9} {'rank-1':>8} {'mAP':>8}")
    base = rows[0][1]
    for name, ips, r1, mAP in rows:
        print(f"{name:<36} {ips:9.1f} {ips / base:8.2f}x {r1:8.2%} {mAP:8.2%}")


if __name__ == "__main__":
    main()

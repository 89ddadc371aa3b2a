"""LFW 10-fold verification of a face embedder (default: dlib's ResNet behind our detection and alignment).

Every image of pairs.txt is detected (dlib HOG, one more upsampling when nothing is found; a centred-face
assumption as the last resort, counted), aligned on 5 landmarks and embedded once; embeddings are cached
(one file per runtime). Reports plain and flip-averaged embeddings.

Issue 16 item 4 (2026-11-29, 2-core build machine under other work): ``--runtime dlib`` (run as main's script at
4621f76) and the default ``--runtime onnx`` gave the same table, plain 98.82 % ± 0.52 % (AUC 0.9988) and
flip-avg 99.08 % ± 0.44 % (AUC 0.9990), 48 centred-face fallbacks each, every one of the 7,701 embeddings
within 3.8e-7; 1.6 against 18.2 images/s (plain and mirrored).

Examples:
    python benchmarks/lfw_verification.py
    python benchmarks/lfw_verification.py --lfw ../shared/data/lfw --cache /tmp/lfw_dlib.npz
    python benchmarks/lfw_verification.py --runtime dlib      # dlib's own network (before issue 16), ~1 h
    python benchmarks/lfw_verification.py --checkpoint runs/face_cpu_budget_cosface/best.pt --center-crop 0.83
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.data import read_lfw
from reid.face import FACE_EMBEDDERS, DlibFaceEmbedder
from reid.images import read_image
from reid.metrics import kfold_verification, pair_scores


def embed_all(
    paths: list[str], cache: Path | None, runtime: str = "onnx", batch: int = 64, model: str = "dlib"
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Plain and flip-averaged embeddings of every image, exactly as the face model ``model`` gives them with
    flip off and on (the flip one: the sum of the chip's and its mirror's descriptors, normalised). ``runtime``
    (dlib only): where its network runs (``onnx``: ONNX Runtime, photos on min(2, cores) threads; ``dlib``:
    dlib's own network, one photo after another, as before issue 16)."""
    if cache and cache.exists():
        z = np.load(cache)
        return z["plain"], z["flip"], int(z["fallbacks"]), float(z["seconds"])
    if model == "dlib":
        emb = DlibFaceEmbedder(on_no_face="center", runtime=runtime, workers=None if runtime == "onnx" else 1)
    elif runtime != "onnx":
        raise SystemExit(
            f"error: --runtime {runtime} is dlib's own network; {model} runs on ONNX Runtime only"
        )
    else:
        emb = FACE_EMBEDDERS.get(model)(on_no_face="center")
    plain, flipped = [], []
    t = time.perf_counter()
    with tqdm(total=len(paths), desc=f"detect+align+embed ({model})", unit="img") as bar:
        for s in range(0, len(paths), batch):
            one, both = emb.embed_chips_both(emb.aligned_chips(paths[s : s + batch]))
            plain.append(one)
            flipped.append(both)
            bar.update(len(one))
    seconds = time.perf_counter() - t
    plain, flipped = np.concatenate(plain), np.concatenate(flipped)
    if cache:
        np.savez(cache, plain=plain, flip=flipped, fallbacks=emb.fallbacks, seconds=seconds)
    return plain, flipped, emb.fallbacks, seconds


def embed_checkpoint(paths: list[str], checkpoint: str, crop: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A face model trained here (``python -m training train --config configs/face/...``): the centre
    ``crop`` of each LFW image (framed like its training crops), plain and flip-averaged."""
    from reid.embedder import Embedder
    from reid.images import center_crop

    emb = Embedder.from_checkpoint(checkpoint, device="cpu")
    t = time.perf_counter()
    images = [center_crop(read_image(p), crop) for p in paths]
    plain = emb.embed(images, flip=False, progress="embedding")
    flipped = emb.embed(images, flip=True, progress="embedding (flip-avg)")
    return plain, flipped, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", default=str(Path(__file__).resolve().parents[2] / "shared/data/lfw"))
    ap.add_argument(
        "--cache",
        default=None,
        help="'' for none (default /tmp/lfw_<face model>_embeddings.npz); the runtime is added to the name",
    )
    ap.add_argument("--face-model", default="dlib", choices=FACE_EMBEDDERS.names(), help="face embedder")
    ap.add_argument(
        "--runtime",
        default="onnx",
        choices=["onnx", "dlib"],
        help="where dlib's network runs: ONNX Runtime (default) or dlib itself (the path before issue 16)",
    )
    ap.add_argument("--checkpoint", help="a face checkpoint trained here, instead of dlib")
    ap.add_argument("--center-crop", type=float, default=0.83, help="with --checkpoint: centre fraction kept")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pairs = read_lfw(args.lfw)
    paths = pairs.image_paths()
    pos = {p: i for i, p in enumerate(paths)}
    ia = np.array([pos[p.path_a] for p in pairs.pairs])
    ib = np.array([pos[p.path_b] for p in pairs.pairs])
    print(describe())
    print(pairs.summary())
    if args.checkpoint:
        plain, flipped, seconds = embed_checkpoint(paths, args.checkpoint, args.center_crop)
        print(
            f"embedder: {args.checkpoint} (centre crop {args.center_crop}); "
            f"{2 * len(paths) / seconds:.1f} images/s"
        )
    else:
        if args.cache is None:
            args.cache = f"/tmp/lfw_{args.face_model}_embeddings.npz"
        cache = Path(args.cache) if args.cache else None
        if cache is not None:
            cache = cache.with_name(f"{cache.stem}-{args.runtime}{cache.suffix}")
        plain, flipped, fallbacks, seconds = embed_all(paths, cache, args.runtime, model=args.face_model)
        print(
            f"embedder: {FACE_EMBEDDERS.get(args.face_model).plain_model_id} on {args.runtime}, HOG detection + "
            f"5-point alignment; "
            f"{fallbacks} of {len(paths)} images had no detected face and used the centred-face assumption; "
            f"{len(paths) / seconds:.1f} images/s (detect + align + embed plain and mirrored)"
        )
    print(f"{'embeddings':<10} {'accuracy':>18} {'AUC':>8} {'TAR@FAR=1e-2':>13} {'TAR@FAR=1e-3':>13}")
    for name, e in (("plain", plain), ("flip-avg", flipped)):
        r = kfold_verification(pair_scores(e, ia, ib), pairs.labels, pairs.folds)
        print(
            f"{name:<10} {r.accuracy_mean:10.2%} ± {r.accuracy_std:5.2%} {r.auc:8.4f} "
            f"{r.tar_at_far[1e-2]:13.2%} {r.tar_at_far[1e-3]:13.2%}"
        )


if __name__ == "__main__":
    main()

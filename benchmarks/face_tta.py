"""Test-time augmentation for dlib's face embeddings, measured on validation identities only (CelebA).

Does averaging the descriptors of shifted copies of the aligned chip (besides its mirror, the default) name
more enrolled people at a fixed share of strangers? Each photo's face is detected and aligned once, to a
160x160 chip with 30 % padding: the same face scale as the embedder's 150x150 chip with 25 % padding, with 5
pixels of margin on each side. The 150x150 windows are cut at the listed offsets, mirrored when asked, and
their unit descriptors summed and normalised. The open-set protocol is ``benchmarks/aggregation_choice.py``'s,
with centroid aggregation at each variant's best margin weight. LFW takes no part.

Issue 12 (2026-11-30, AMD EPYC, 2 cores): no shifted variant named more than the mirror alone with one photo
(67.73 % against 66.74 % and 65.78 %); with three, 5 shifts of 3 px gave 87.53 % against 87.36 %, inside the
noise of 297 identities, for five times the descriptors. A one-off 3x3 grid gave no more (66.32 % / 87.36 %).
So the embedder keeps the mirror only. dlib's own ``num_jitters=10`` on the enrolled photos alone (2026-12-01;
queries centre + mirror) gave 67.85 % and 87.16 % against 67.73 % and 87.36 %, for 0.58 s an enrolled photo
(dlib's network, alone or beside another benchmark; the default's takes about 16 ms): no gain worth some 35
times the enrolment time, so enrolment keeps the default too.

Examples:
    python benchmarks/face_tta.py
    python benchmarks/face_tta.py --enroll 1 3 --far 0.01
    python benchmarks/face_tta.py --jitter 10 100   # dlib's num_jitters on the enrolled photos
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.aggregation_choice import BETAS, study
from benchmarks.machine import describe
from reid.embedder import l2_normalize

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
PLUS = [(0, 0), (3, 0), (-3, 0), (0, 3), (0, -3)]
DEFAULT = "centre + mirror (default)"  # what the embedder does (flip)
VARIANTS: dict[str, tuple[list[tuple[int, int]], bool]] = {
    "centre": ([(0, 0)], False),
    DEFAULT: ([(0, 0)], True),
    "5 shifts of 3 px + mirrors": (PLUS, True),
    "5 shifts of 5 px + mirrors": ([(0, 0), (5, 0), (-5, 0), (0, 5), (0, -5)], True),
}


def chips160(emb, paths: list[str]) -> np.ndarray:
    """Every photo's largest face (a centred face when none is found, as for LFW), aligned to 160x160."""
    from reid.face.dlib_backend import align
    from reid.images import to_rgb_array

    def one(p: str) -> np.ndarray:
        arr = to_rgb_array(p, where=p)
        return align(arr, emb.face_of(arr, p), size=160, padding=0.3)

    out: list[np.ndarray] = []
    for s in tqdm(range(0, len(paths), 64), desc="detect + align", unit="batch"):
        out += emb._map(one, paths[s : s + 64])
    return np.stack(out)


def descriptors(net, chips: np.ndarray, offsets: list[tuple[int, int]], mirror: bool) -> np.ndarray:
    """Each chip's windows at ``offsets`` (and their mirrors), unit descriptors summed and normalised."""
    out = []
    for s in range(0, len(chips), 256):
        c = chips[s : s + 256]
        acc = np.zeros((len(c), net.dim), np.float32)
        for dy, dx in offsets:
            w = np.ascontiguousarray(c[:, 5 + dy : 155 + dy, 5 + dx : 155 + dx])
            for v in [w, np.ascontiguousarray(w[:, :, ::-1])] if mirror else [w]:
                acc += l2_normalize(net._descriptors(list(v)))
        out.append(l2_normalize(acc))
    return np.concatenate(out)


def enrolment_rows(labels: np.ndarray, most: int) -> np.ndarray:
    """Rows of each identity's first ``most`` photos: the ones ``study`` enrols (with ``n <= most``)."""
    return np.concatenate([np.flatnonzero(labels == p)[:most] for p in np.unique(labels)])


def jittered(chips: np.ndarray, jitter: int) -> np.ndarray:
    """Unit descriptors of the chips' centre windows by dlib's own network with ``num_jitters=jitter`` (dlib's
    random crops, scales, rotations and mirrors, averaged): what ``face_recognition``'s ``num_jitters`` does."""
    from reid.face.dlib_backend import DlibFaceEmbedder

    net = DlibFaceEmbedder(runtime="dlib", jitter=jitter)
    out = []
    for s in tqdm(range(0, len(chips), 16), desc=f"dlib jitter {jitter}", unit="batch"):
        out.append(net._descriptors(list(np.ascontiguousarray(chips[s : s + 16, 5:155, 5:155]))))
    return l2_normalize(np.concatenate(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "celeba-faces"))
    ap.add_argument("--enroll", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--far", type=float, default=0.01)
    ap.add_argument(
        "--jitter",
        type=int,
        nargs="*",
        default=[10],
        help="dlib num_jitters for the enrolled photos only (queries: centre + mirror); none to skip",
    )
    args = ap.parse_args(argv)
    from reid.data import read_identity_folders
    from reid.face.dlib_backend import DlibFaceEmbedder

    recs = read_identity_folders(args.data)
    labels = np.asarray([r.pid for r in recs])
    print(describe())
    net = DlibFaceEmbedder(on_no_face="center")  # one network for the detection and every variant
    chips = chips160(net, [r.path for r in recs])
    print(f"CelebA: {len(labels)} photos of {len(np.unique(labels))} identities, target {args.far:.2%} strangers; "
          f"centroid aggregation, best beta of {BETAS} per row")  # fmt: skip
    print(
        f"{'variant':<30} {'chips':>5} {'enrolled':>8} {'beta':>5} {'named right':>11} {'strangers':>9} {'rank-1':>7}"
    )

    def rows_of(name: str, chips_per_photo: int, emb: np.ndarray, enrolled: np.ndarray | None = None) -> None:
        """One table row per enrolment size: the best beta's named right, strangers and rank-1."""
        for n in args.enroll:
            res = study(emb, labels, n, args.far, enroll_emb=enrolled)
            named, beta = max((res[("centroid", b)][0], b) for b in BETAS)
            _, acc, rank1, *_ = res[("centroid", beta)]
            print(f"{name:<30} {chips_per_photo:>5} {n:>8} {beta:>5.2f} {named:>11.2%} {acc:>9.2%} "
                  f"{rank1:>7.2%}")  # fmt: skip

    embs = {}
    for name, (offsets, mirror) in VARIANTS.items():
        embs[name] = descriptors(net, chips, offsets, mirror)
        rows_of(name, len(offsets) * (1 + mirror), embs[name])
    # jitter at enrolment only: a gallery embeds each enrolled photo once, so it can afford dlib's slow path there
    default = embs[DEFAULT]
    rows = enrolment_rows(labels, max(args.enroll))
    for j in args.jitter:
        start = time.perf_counter()
        enrolled = default.copy()
        enrolled[rows] = jittered(chips[rows], j)
        each = (time.perf_counter() - start) / len(rows)
        rows_of(f"enrolled: jitter {j} ({each:.2f} s)", j, default, enrolled)
    return 0


if __name__ == "__main__":
    sys.exit(main())

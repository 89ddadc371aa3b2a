"""Face photos per second, end to end (JPEG bytes -> decode -> detect -> 5 landmarks -> align -> 128-d embedding),
on 1 and 2 cores, with the time of each stage.

Photos: ``--n`` LFW photos (every k-th image of pairs.txt's set, sorted by path, so the same photos every run).
The shared LFW images are the centre 150x150 of the 250x250 deep-funneled photos; ``--size 250`` (the default)
pads them back to 250x250 by repeating the border pixels (the face keeps its ~100 px, as in LFW's own photos,
and no mirrored face appears in the margin) and re-encodes them as JPEG quality 95; ``--size 150`` uses the
files as they are.

Each row runs in a fresh process pinned to ``cores`` CPUs (``sched_setaffinity``) with every thread pool of
the native libraries set to that many threads, so a 1-core row cannot borrow the second core:

- ``requests``: ``cores`` threads, each taking the next photo's bytes and doing what the API does for an
  upload (``decode_image_bytes`` then ``DlibFaceEmbedder.embed_single``): the shape of ``reid-serve``, whose
  synchronous endpoints run in a thread pool;
- ``batch``: ``DlibFaceEmbedder.embed(paths)`` over the photos written as files, 32 per call: the shape of
  enrolment, calibration and the LFW benchmark;
- ``processes``: ``cores`` processes, each with its own model, each doing ``requests`` on its share (what
  several server workers would do).

Photos with no face (FaceNotFoundError) or several still count as processed: the work was done. ``cores
used`` is the CPU time of the row's process(es) over its wall time: on a machine shared with other work, a
2-core row that used ~1 core had no second core to use, whatever the code does; ``photos/CPU-s`` does not
depend on that (it is what each core gives when it is free). The stage table is one thread on one core, mean
ms per photo (the retry: mean over all photos of the time spent in the doubled-size second pass, which
``detect`` includes; the network: one chip per call and 32 per call).

Measured 2026-11-29 on the 2-core build machine (Intel Xeon, dlib-bin 20.0.1 without BLAS, onnxruntime 1.32.0),
shared with other engineers' benchmarks (load average 5.1 at start, 6.3 at end: every row got about half a core,
see ``cores used``), default options:

    path         mode       cores  photos/s  ms/photo cores used photos/CPU-s  no single face
    before       requests       1       5.7     175.5       0.66          8.6               3
    before       batch          1       4.0     249.3       0.49          8.2               3
    before       requests       2       4.2     236.3       0.53          8.0               3
    before       batch          2       4.0     248.8       0.50          8.1               3
    before       processes      2       4.0     250.1       0.50          8.0               3
    after        requests       1      24.7      40.4       0.48         51.3               3
    after        batch          1      30.5      32.8       0.51         60.4               3
    after        requests       2      29.7      33.6       0.52         57.4               3
    after        batch          2      31.2      32.1       0.53         58.6               3
    after        processes      2      35.1      28.5       0.61         57.9               3
    path            decode    detect     retry landmarks     align   embed 1  embed 32
    before            1.42     17.38      1.43      1.65      0.86    200.48    189.25
    after             1.74     19.07      1.23      1.89      0.89     12.31     10.94

Every "after" row's vectors are within 3.6e-7 of the "before" ones, for the same photos. HOG detection is now
the largest stage. Scanning a copy shrunk by 5/6 (one step of HOG's pyramid) would save roughly a third of it,
but found 93.6 % of 1,094 CelebA training crops (every 5th) in the first pass against 95.5 % at full size, so
photos no larger than ``max_side`` are still scanned at full size (chosen on CelebA's detection rate and the
speed on these photos; LFW's verification accuracy chose nothing). With ``--ort-threads 2`` (similar load) the after rows gave 18-33 photos/s and 28-51 photos
per CPU-second: intra-op threads lose to one thread per caller. ``--paths after after-mtcnn --n 60 --modes
requests --cores 1``: MTCNN detection 90 ms per photo against HOG's 17 ms (9.3 against 30.6 photos/s).

Examples:
    python benchmarks/face_throughput.py                       # 200 photos, 250x250, before and after, all modes
    python benchmarks/face_throughput.py --n 100 --size 150    # the stored 150x150 files
    python benchmarks/face_throughput.py --paths before --modes requests --cores 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
LFW = Path(os.environ.get("REID_SHARED_DATA", ROOT.parent / "shared" / "data")) / "lfw"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
BATCH = 32


def embedder_for(path: str, cores: int, ort_threads: int = 1):
    """The face embedder of a path. ``before``: the code before issue 16 item 4 (dlib's own network, one call
    at a time, photos one after another); ``after``: the network on ONNX Runtime, ``embed`` spread over
    ``cores`` threads; ``after-mtcnn``: the same with facenet-pytorch's MTCNN detector instead of dlib's HOG;
    ``after-flip``: ``after`` with each chip and its mirror embedded (the service's default);
    ``insightface``, ``insightface-flip``: InsightFace's w600k_mbf (the opt-in model, ``[insightface]`` extra)
    behind the same detection, on ONNX Runtime the same way."""
    from reid.face import DlibFaceEmbedder, FaceDetector

    if path == "before":
        return DlibFaceEmbedder(runtime="dlib", workers=1)
    if path == "after":
        return DlibFaceEmbedder(runtime="onnx", threads=ort_threads, workers=cores)
    if path == "after-mtcnn":
        return DlibFaceEmbedder(FaceDetector("mtcnn"), runtime="onnx", threads=ort_threads, workers=cores)
    if path == "after-flip":
        return DlibFaceEmbedder(runtime="onnx", flip=True, threads=ort_threads, workers=cores)
    if path.startswith("insightface"):
        from reid.face.insightface_mbf import InsightFaceMbfEmbedder

        return InsightFaceMbfEmbedder(flip=path.endswith("-flip"), threads=ort_threads, workers=cores)
    raise SystemExit(f"unknown path {path!r}")


PATHS = ("before", "after", "after-mtcnn", "after-flip", "insightface", "insightface-flip")
DEFAULT_PATHS = ("before", "after")
MODES = ("requests", "batch", "processes")


# ------------------------------------------------------------------------------------------------- photos
def make_photos(lfw: Path, n: int, size: int, folder: Path) -> list[Path]:
    """``n`` LFW photos as JPEG files in ``folder`` (see the module docstring)."""
    import cv2
    from PIL import Image

    from reid.images import read_image

    files = sorted(p for p in lfw.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no LFW photos under {lfw}")
    step = max(1, len(files) // n)
    out = []
    for i, src in enumerate(files[::step][:n]):
        dst = folder / f"{i:04d}_{src.name}"
        if size == 150:
            dst.write_bytes(src.read_bytes())
        else:
            img = read_image(src)
            top = (size - img.shape[0]) // 2
            left = (size - img.shape[1]) // 2
            img = cv2.copyMakeBorder(
                img, top, size - img.shape[0] - top, left, size - img.shape[1] - left, cv2.BORDER_REPLICATE
            )
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            dst.write_bytes(buf.getvalue())
        out.append(dst)
    return out


# ------------------------------------------------------------------------------------------------- worker
def pin(cores: int) -> None:
    """This process (and every thread it starts) on the first ``cores`` CPUs it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < cores:
        raise SystemExit(f"{cores} cores asked, {len(allowed)} allowed")
    os.sched_setaffinity(0, allowed[:cores])


def run_requests(emb, datas: list[bytes], threads: int) -> tuple[float, list, int]:
    """(seconds, embeddings or None per photo, photos without exactly one face)."""
    from reid.face import FaceNotFoundError, MultipleFacesError
    from reid.images import decode_image_bytes

    out: list = [None] * len(datas)
    nxt = iter(range(len(datas)))
    lock = threading.Lock()
    misses = [0]

    def work() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            try:
                out[i] = emb.embed_single(decode_image_bytes(datas[i]), where=str(i))[1]
            except (FaceNotFoundError, MultipleFacesError):
                with lock:
                    misses[0] += 1

    pool = [threading.Thread(target=work) for _ in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return time.perf_counter() - t, out, misses[0]


def run_batch(emb, paths: list[Path]) -> tuple[float, list, int]:
    emb.on_no_face = "center"  # a batch call needs one vector per photo; misses counted as fallbacks
    before = emb.fallbacks
    t = time.perf_counter()
    vecs = [emb.embed([str(p) for p in paths[s : s + BATCH]]) for s in range(0, len(paths), BATCH)]
    return time.perf_counter() - t, list(np.concatenate(vecs)), emb.fallbacks - before


def _process_share(args: tuple[str, int, list[str]]) -> tuple[float, float, int, float]:
    path, ort_threads, files = args
    emb = embedder_for(path, 1, ort_threads)
    datas = [Path(f).read_bytes() for f in files]
    run_requests(emb, datas[:3], 1)  # warm-up
    t0, c0 = time.time(), time.process_time()
    _, _, misses = run_requests(emb, datas, 1)
    return t0, time.time(), misses, time.process_time() - c0


def run_processes(
    path: str, cores: int, paths: list[Path], ort_threads: int
) -> tuple[float, list, int, float]:
    import multiprocessing as mp

    shares = [(path, ort_threads, [str(p) for p in paths[i::cores]]) for i in range(cores)]
    with mp.get_context("fork").Pool(cores) as pool:
        spans = pool.map(_process_share, shares)
    # from the first start to the last end: each process loaded its model and warmed up before its start
    seconds = max(s[1] for s in spans) - min(s[0] for s in spans)
    return seconds, [], sum(s[2] for s in spans), sum(s[3] for s in spans)


def stages(emb, datas: list[bytes]) -> dict[str, float]:
    """Mean ms per photo of each stage, one thread."""
    import dlib

    from reid.images import decode_image_bytes

    det = emb.detector
    acc = dict.fromkeys(("decode", "detect", "retry", "landmarks", "align", "embed 1", "embed 32"), 0.0)
    chips = []
    for data in datas:
        t = time.perf_counter()
        img = decode_image_bytes(data)
        t1 = time.perf_counter()
        faces = det.detect(img)
        t2 = time.perf_counter()
        acc["decode"] += t1 - t
        acc["detect"] += t2 - t1
        if len(det.last_passes) > 1:  # time the retry pass alone, as detect() just ran it
            up = det.last_passes[1][2]
            t = time.perf_counter()
            det._rects(img, up)
            acc["retry"] += time.perf_counter() - t
        if not faces:
            continue
        f = faces[0]
        rect = dlib.rectangle(*f.box)
        t = time.perf_counter()
        det.landmarks(img, rect)
        t1 = time.perf_counter()
        chip = emb.align_chip(img, f)  # each model's own alignment (dlib's 150x150, ArcFace's 112x112)
        t2 = time.perf_counter()
        emb.embed_chips([chip])
        t3 = time.perf_counter()
        acc["landmarks"] += t1 - t
        acc["align"] += t2 - t1
        acc["embed 1"] += t3 - t2
        chips.append(chip)
    t = time.perf_counter()
    for s in range(0, len(chips), BATCH):
        emb.embed_chips(chips[s : s + BATCH])
    acc["embed 32"] = time.perf_counter() - t
    n = len(datas)
    out = {k: 1000 * v / n for k, v in acc.items()}
    # the per-chip network stages are per chip, not per photo
    out["embed 1"] = 1000 * acc["embed 1"] / max(1, len(chips))
    out["embed 32"] = 1000 * acc["embed 32"] / max(1, len(chips))
    return out


def worker(args: argparse.Namespace) -> None:
    path, mode, cores = args.paths[0], args.modes[0], args.cores[0]
    pin(cores)
    import torch

    torch.set_num_threads(cores)
    paths = sorted(Path(args.photos_dir).glob("*.jpg"))
    datas = [p.read_bytes() for p in paths]
    result: dict = {"path": path, "mode": mode, "cores": cores}
    if mode == "processes":
        seconds, vecs, misses, cpu = run_processes(path, cores, paths, args.ort_threads)
    else:
        emb = embedder_for(path, cores, args.ort_threads)
        run_requests(emb, datas[:3], 1)  # warm-up: this thread's detector, the network
        c0 = time.process_time()  # CPU seconds of every thread of this process
        if mode == "requests":
            seconds, vecs, misses = run_requests(emb, datas, cores)
        else:
            seconds, vecs, misses = run_batch(emb, paths)
        cpu = time.process_time() - c0
        if args.stages:
            result["stages"] = stages(emb, datas)
    result.update(seconds=seconds, photos=len(datas), misses=misses, cpu=cpu)
    if vecs:
        # a missed photo's row: NaNs of the model's size
        dim = next((v.size for v in vecs if v is not None), 1)
        np.save(Path(args.photos_dir) / f"vecs-{path}-{mode}-{cores}.npy", np.array(
            [v if v is not None else np.full(dim, np.nan, np.float32) for v in vecs]
        ))  # fmt: skip
    print(json.dumps(result), flush=True)


def model_of(path: str) -> str:
    """The vectors a path gives: paths of one model must agree; different models are not compared."""
    return ("insightface" if path.startswith("insightface") else "dlib") + (
        "-flip" if path.endswith("-flip") else ""
    )


# ------------------------------------------------------------------------------------------------- parent
def child(path: str, mode: str, cores: int, folder: Path, stage_table: bool, ort_threads: int) -> dict:
    env = dict(os.environ, **dict.fromkeys(THREAD_VARS, str(cores)), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--worker", "--photos-dir", str(folder), "--paths", path]
    cmd += ["--modes", mode, "--cores", str(cores), "--ort-threads", str(ort_threads)]
    cmd += ["--stages"] if stage_table else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path}/{mode}/{cores} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", default=str(LFW))
    ap.add_argument("--n", type=int, default=200, help="photos")
    ap.add_argument("--size", type=int, default=250, choices=[150, 250], help="photo side (see above)")
    ap.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), choices=PATHS)
    ap.add_argument(
        "--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads of the after paths"
    )
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--cores", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--photos-dir", help=argparse.SUPPRESS)
    ap.add_argument("--stages", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    from benchmarks.machine import describe

    print(describe())
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="face-throughput-") as tmp:
        folder = Path(tmp)
        photos = make_photos(Path(args.lfw), args.n, args.size, folder)
        print(
            f"photos: {len(photos)} LFW photos at {args.size}x{args.size} (JPEG, mean "
            f"{np.mean([p.stat().st_size for p in photos]) / 1024:.1f} KB); each row a fresh process pinned to its "
            f"cores with {', '.join(THREAD_VARS)} and torch threads = cores; batch = {BATCH} photos per embed() call"
        )
        print(
            f"load average at start: {', '.join(f'{x:.2f}' for x in load0)} (a machine shared with other work)"
        )
        rows, stage_rows = [], {}
        print(
            f"{'path':<16} {'mode':<10} {'cores':>5} {'photos/s':>9} {'ms/photo':>9} {'cores used':>10} "
            f"{'photos/CPU-s':>12} {'no single face':>15}"
        )
        for path in args.paths:
            for cores in args.cores:
                for mode in args.modes:
                    if mode == "processes" and cores == 1:
                        continue  # one process is the requests row
                    first = cores == min(args.cores) and mode == args.modes[0]
                    r = child(path, mode, cores, folder, first and mode != "processes", args.ort_threads)
                    rows.append(r)
                    if "stages" in r:
                        stage_rows[path] = r["stages"]
                    rate = r["photos"] / r["seconds"]
                    print(
                        f"{path:<16} {mode:<10} {cores:>5} {rate:>9.1f} {1000 / rate:>9.1f} "
                        f"{r['cpu'] / r['seconds']:>10.2f} {r['photos'] / r['cpu']:>12.1f} {r['misses']:>15}",
                        flush=True,
                    )
        if stage_rows:
            keys = list(next(iter(stage_rows.values())))
            print("stages, one thread on one core, mean ms per photo (network: per chip)")
            print(f"{'path':<16}" + "".join(f"{k:>10}" for k in keys))
            for path, st in stage_rows.items():
                print(f"{path:<16}" + "".join(f"{st[k]:>10.2f}" for k in keys))
        compare(folder, args.paths)
    print(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def compare(folder: Path, paths: list[str]) -> None:
    """Each row's embeddings against those of the first path of the same model, its 1-core row of the same
    mode: the same photos with a face, the same vectors."""
    for f in sorted(folder.glob("vecs-*.npy")):
        path, mode, cores = f.stem.removeprefix("vecs-").rsplit("-", 2)
        first = next(p for p in paths if model_of(p) == model_of(path))
        ref_file = folder / f"vecs-{first}-{mode}-1.npy"
        if f == ref_file or not ref_file.exists():
            continue
        ref, v = np.load(ref_file), np.load(f)
        both = ~np.isnan(ref[:, 0]) & ~np.isnan(v[:, 0])
        same = (np.isnan(ref[:, 0]) == np.isnan(v[:, 0])).mean()
        diff = np.abs(v[both] - ref[both]).max() if both.any() else float("nan")
        print(
            f"{path} {mode} {cores} cores vs {first} {mode} 1 core: same photos with a face {same:.1%}, "
            f"max |difference| of the unit vectors {diff:.2e}"
        )


if __name__ == "__main__":
    main()

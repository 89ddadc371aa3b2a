"""Time CMC/mAP/mINP evaluation on a random Market-1501-sized problem (3,368 queries x 15,913 gallery)
against torchreid's Cython ``evaluate_cy``, built and run in the same invocation.

The peer: torchreid's ``rank_cy.pyx`` is compiled with Cython and the system C compiler in a temporary folder
(nothing is written to the repository). Its source is taken from, in order: ``--peer-pyx PATH``, the installed
torchreid package, the torchreid 0.2.5 sdist (``pip download``). torchreid 0.2.5's wheel and sdist do not
ship the .pyx; it is in the deep-person-reid repository (torchreid/metrics/rank_cylib/rank_cy.pyx), so pass
a copy of it with --peer-pyx. Without a source or without Cython the peer is skipped with a message.

Each thread count runs in its own process (the problem is regenerated from the same seed): 1 thread under
``taskset -c 0`` (when available) with OMP/MKL/OpenBLAS threads = 1 and ``workers=1``; 2 threads with those set
to 2. The numbers of both evaluators are checked to agree to 1e-6.

Examples:
    pip install Cython   # a build tool of the benchmark only
    python benchmarks/eval_speed.py --peer-pyx /tmp/rank_cy.pyx
    python benchmarks/eval_speed.py --torchreid-python  # also torchreid's Python evaluator (about 80 s)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def torchreid_rank():
    spec = importlib.util.find_spec("torchreid")
    if spec is None:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "reid/metrics/rank.py"
    s = importlib.util.spec_from_file_location("torchreid_rank", path)
    mod = importlib.util.module_from_spec(s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.loader.exec_module(mod)
    return mod


def find_pyx(explicit: str | None, tmp: Path) -> tuple[Path | None, str]:
    """rank_cy.pyx and where it came from, or (None, why not)."""
    if explicit:
        p = Path(explicit)
        return (p, f"--peer-pyx {p}") if p.is_file() else (None, f"--peer-pyx {p}: no such file")
    spec = importlib.util.find_spec("torchreid")
    if spec is not None:
        hits = list(Path(next(iter(spec.submodule_search_locations))).rglob("rank_cy.pyx"))
        if hits:
            return hits[0], f"installed torchreid ({hits[0]})"
    cmd = [sys.executable, "-m", "pip", "download", "torchreid==0.2.5", "--no-deps", "--no-binary", ":all:"]
    r = subprocess.run([*cmd, "-d", str(tmp), "-q"], capture_output=True, text=True, timeout=600)
    for sdist in tmp.glob("torchreid-*.tar.gz"):
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.name.endswith("rank_cy.pyx")]
            if members:
                tf.extract(members[0], tmp, filter="data")
                return tmp / members[0].name, f"{sdist.name} (sdist)"
        return None, (
            f"neither the installed torchreid nor {sdist.name} ships rank_cy.pyx;"
            " pass deep-person-reid's torchreid/metrics/rank_cylib/rank_cy.pyx with --peer-pyx"
        )
    return None, f"pip download of the torchreid sdist failed: {r.stderr.strip()[-300:]}"


def build_peer(pyx: Path, tmp: Path) -> tuple[Path | None, str]:
    """Compile rank_cy.pyx in tmp; returns the folder holding the extension, or (None, why not)."""
    if importlib.util.find_spec("Cython") is None:
        return None, "Cython is not installed (pip install Cython)"
    build = tmp / "build"
    build.mkdir()
    shutil.copy(pyx, build / "rank_cy.pyx")
    script = (
        "import numpy as np\n"
        "from Cython.Build import cythonize\n"
        "from setuptools import Extension\n"
        "from setuptools.dist import Distribution\n"
        "ext = cythonize([Extension('rank_cy', ['rank_cy.pyx'], include_dirs=[np.get_include()])],"
        " quiet=True, compiler_directives={'language_level': 3})\n"
        "dist = Distribution({'ext_modules': ext})\n"
        "cmd = dist.get_command_obj('build_ext'); cmd.inplace = True\n"
        "dist.run_command('build_ext')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=build, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not list(build.glob("rank_cy*.so")) + list(build.glob("rank_cy*.pyd")):
        return None, f"building rank_cy failed: {(r.stderr or r.stdout).strip()[-400:]}"
    return build, "built"


def problem(args):
    """Random distances with no ties within a row: a float32 row of 15,913 uniform draws holds ~15 equal
    pairs, and where a true match ties a false one the CMC depends on how the sort orders equal keys, which
    the protocol leaves open (torchreid's ``np.argsort`` is unstable: equal keys come out in whatever order
    NumPy's sort for this CPU gives; one query of 3,368 differed by that on an AVX-512 machine). Each row is a
    random permutation of the ranks plus a jitter below half a rank, exact in float32."""
    rng = np.random.default_rng(0)
    ranks = rng.permuted(np.tile(np.arange(args.gallery, dtype=np.float32), (args.queries, 1)), axis=1)
    d = (ranks + 0.5 * rng.random(ranks.shape, dtype=np.float32)) / np.float32(args.gallery)
    qp, gp = rng.integers(0, args.ids, args.queries), rng.integers(0, args.ids, args.gallery)
    qc, gc = rng.integers(0, args.cameras, args.queries), rng.integers(0, args.cameras, args.gallery)
    return d, qp, gp, qc, gc


def child(args) -> None:
    """Time both evaluators in this process (thread count fixed by the parent) and print JSON."""
    import torch

    from reid.metrics import evaluate_rank

    torch.set_num_threads(args.threads)
    d, qp, gp, qc, gc = problem(args)
    out = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        res = evaluate_rank(d, qp, gp, qc, gc, max_rank=50, workers=args.threads)
        times.append(time.perf_counter() - t)
    out["ours"] = {"times": times, "mAP": res.mAP, "rank1": res.rank1, "mINP": res.mINP}
    if args.peer_dir:
        sys.path.insert(0, args.peer_dir)
        import rank_cy

        times = []
        for _ in range(args.peer_repeats):
            t = time.perf_counter()
            cmc, mAP = rank_cy.evaluate_cy(d, qp, gp, qc, gc, 50)
            times.append(time.perf_counter() - t)
        out["peer"] = {
            "times": times,
            "mAP": float(mAP),
            "rank1": float(cmc[0]),
            "cmc_diff": float(np.abs(np.asarray(cmc, np.float64) - res.cmc).max()),
            "map_diff": abs(float(mAP) - res.mAP),
        }
    print(json.dumps(out))


def run_child(args, threads: int, peer_dir: Path | None) -> dict:
    env = dict(os.environ)
    env.update({v: str(threads) for v in THREAD_VARS})
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads)]
    for k in ("queries", "gallery", "ids", "cameras", "repeats", "peer_repeats"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if peer_dir:
        cmd += ["--peer-dir", str(peer_dir)]
    pin = shutil.which("taskset")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if pin and len(cpus) >= threads:
        cmd = [pin, "-c", ",".join(map(str, cpus[:threads])), *cmd]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"benchmark child failed ({' '.join(cmd)}):\n{r.stderr}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["pinned"] = (
        f"taskset -c {','.join(map(str, cpus[:threads]))}" if pin and len(cpus) >= threads else "no"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--ids", type=int, default=751)
    ap.add_argument("--cameras", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of ours per thread count")
    ap.add_argument("--peer-repeats", type=int, default=2, help="timed runs of evaluate_cy per thread count")
    ap.add_argument("--threads-list", default="1,2", help="thread counts to run, e.g. 1,2")
    ap.add_argument("--peer-pyx", help="torchreid's rank_cy.pyx (see the module docstring)")
    ap.add_argument("--torchreid-python", action="store_true", help="also time torchreid's Python evaluator")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--peer-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="rank_cy_") as tmp:
        pyx, source = find_pyx(args.peer_pyx, Path(tmp))
        peer_dir, why = (None, source) if pyx is None else build_peer(pyx, Path(tmp))
        if peer_dir is None:
            print(f"torchreid evaluate_cy SKIPPED: {why}")
        results = {t: run_child(args, t, peer_dir) for t in map(int, args.threads_list.split(","))}

    print(describe())
    if load:
        print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)")
    print(
        f"problem: {args.queries} x {args.gallery} float32, {args.ids} ids, {args.cameras} cameras,"
        " random distances, max_rank 50"
    )
    if peer_dir is not None:
        print(f"peer: torchreid evaluate_cy from {source}, compiled at benchmark time")
    head = f"{'evaluator':<34} {'threads':>7} {'pinned':>14} {'best s':>8} {'median s':>9} {'mAP':>9} {'rank-1':>7}"
    print(head)
    for t, r in results.items():
        rows = [("reid.metrics.evaluate_rank", r["ours"])]
        if "peer" in r:
            rows.append(("torchreid evaluate_cy (Cython)", r["peer"]))
        for name, v in rows:
            print(
                f"{name:<34} {t:>7} {r['pinned']:>14} {min(v['times']):8.3f} {np.median(v['times']):9.3f}"
                f" {v['mAP']:9.6f} {v['rank1']:7.4f}"
            )
        if "peer" in r:
            p = r["peer"]
            ok = p["cmc_diff"] <= 1e-6 and p["map_diff"] <= 1e-6
            print(
                f"  {t} thread(s): evaluate_cy / ours = {min(p['times']) / min(r['ours']['times']):.1f}x (best);"
                f" max |CMC diff| {p['cmc_diff']:.1e}, |mAP diff| {p['map_diff']:.1e}"
                f" -> {'agree to 1e-6' if ok else 'DISAGREE'}"
            )
    if args.torchreid_python and (tr := torchreid_rank()) is not None:
        d, qp, gp, qc, gc = problem(args)
        t = time.perf_counter()
        _, mAP = tr.evaluate_rank(d, qp, gp, qc, gc, max_rank=50, use_cython=False)
        print(
            f"torchreid evaluate_rank (Python), this process: {time.perf_counter() - t:.1f} s, mAP {mAP:.6f}"
        )


if __name__ == "__main__":
    main()

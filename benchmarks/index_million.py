"""1M body templates on real-like embeddings: build time, identify latency, person recall@1, memory, for
exact search, HNSW and IVF side by side; or (``--growth``) the gallery's default index grown to 1M while a
second thread identifies.

Real-like, not uniform random: every cuhk03-np crop of the shared data is embedded once with the shipped body
model (``models/body/mobilenetv2_cuhk03.pt`` on ONNX Runtime, 256-d; cached under ``--cache``, never in the
repository), and a generative model is fitted to them: identity centres from a Gaussian mixture in the PCA
subspace of the means of the 427 *training* identities (``--centres``; labeled boxes and detector boxes), with
as many components as it takes for sampled identities to lie as close to their nearest other identity as real
ones do; several photos per person from the within-identity residual covariance of the 100 identities the
shipped model held out of its training (``--spread``; unseen by the model, like the people a store enrolls:
photos of a trained identity sit closer together, and would flatter an approximate index). The table's
header prints real against synthetic: cosine of two photos of one person, of two persons, and of an identity
to its nearest other identity. Templates: ``--per-person`` photos per person (2-8, 5 on average:
1M templates are ~200k persons). Queries: a new photo of an enrolled person (``--queries``) and photos of
persons never enrolled (``--strangers``, the hard case for an approximate index: no cluster of their own).
The fit needs scikit-learn (the ``test`` extra).

Measured per kind: build time (wall and CPU seconds, all FAISS threads, as a start-up without a snapshot
builds), the time ``VectorIndex.export`` takes (what a background rebuild copies, in chunks, under the
lock), the serialised size and the resident memory it added, then ``IndexCache.rank_persons`` (the gallery's
identify minus the SQL lookup of the answer: FAISS search of the top max(10k, 64) templates and per-person
aggregation) one query at a time with one OpenMP thread (``IndexConfig.search_threads``, the service's
setting): wall p50/p99, the calling thread's CPU p50 (what a query costs whatever else the machine runs), and
person recall@1 = the first person equals exact search's (the person of the best template over all 1M).
The load average is printed beside each row: the build machine is shared, and wall times grow with it.

The gallery's defaults for large galleries (``IndexConfig``: exact below 20k templates, IVF-flat above with
about 2 sqrt(n) lists and 32 probed) were chosen from this benchmark on the synthetic data above; no test
split's outcome chose anything.

Examples:
    python benchmarks/index_million.py                                    # 1M: flat, HNSW, IVF side by side
    python benchmarks/index_million.py --kinds ivf --nlist 0 1414 --nprobe 16 32
    python benchmarks/index_million.py --centres test --spread test      # a look at the test identities
    python benchmarks/index_million.py --growth                           # the default index grown to 1M
    python benchmarks/index_million.py --n 100000 --queries 200 --kinds flat ivf   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("index_million")


def real_embeddings(
    data: Path, checkpoint: Path, cache: Path, runtime: str = "onnx"
) -> dict[str, np.ndarray]:
    """Embeddings of every cuhk03-np crop (labeled train, detector boxes of the train identities, query, test
    gallery) with the body model, cached in ``cache`` (keyed by the model id): the fit is cheap, the
    embedding is minutes on two cores."""
    from reid.data.readers import read_cuhk03_np, read_extra_train
    from reid.embedder import load_embedder

    emb = load_embedder(checkpoint, runtime=runtime)
    path = cache / f"cuhk03np-{emb.model_id}.npz"
    if path.is_file():
        logger.info("real embeddings from %s", path)
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    ds = read_cuhk03_np(data / "cuhk03-np")
    detected = read_extra_train(data / "cuhk03-np-detected-train")
    records = [(r, 0) for r in ds.train] + [(r, 1) for r in detected]
    records += [(r, 2) for r in ds.query] + [(r, 3) for r in ds.gallery]
    t = time.perf_counter()
    vecs = []
    for s in range(0, len(records), 256):
        vecs.append(emb.embed([r.path for r, _ in records[s : s + 256]], batch_size=32))
        logger.info("embedded %d / %d crops", s + len(vecs[-1]), len(records))
    out = {
        "vectors": np.concatenate(vecs).astype(np.float32),
        "pids": np.array([r.pid for r, _ in records], np.int64),
        "split": np.array([s for _, s in records], np.int8),
        "model_id": np.array(emb.model_id),
    }
    logger.info("embedded %d crops in %.0f s", len(records), time.perf_counter() - t)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


class RealLike:
    """A generative model of body embeddings fitted to real ones: template = unit(centre + residual).

    Centres: identity means of the real embeddings, modelled in the PCA subspace that keeps ``variance`` of
    their spread by a Gaussian mixture (diagonal covariances in that already decorrelated basis), plus
    isotropic noise of the remaining variance in the other directions. The number of components is the
    smallest (1, 2, 4, ..., 128) whose sampled identities lie as close to their nearest other identity as the
    real ones do (median cosine, within 0.01, at the real number of identities): an approximate index finds
    its way among crowded look-alikes less easily than among evenly spread people, and BIC alone picks one
    smooth Gaussian whose identities are farther apart than real ones (median 0.52 against 0.65 here).
    Residuals: the real within-identity residuals' covariance (pooled over identities, full rank), of the
    ``spread_*`` identities when given (identities the model never trained on scatter wider than those it
    did: cosine of two photos of one person 0.63 against 0.74 here). Several photos of one person thus
    scatter the way real ones do around a centre placed the way real identities are placed relative to each
    other.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        pids: np.ndarray,
        spread_vectors: np.ndarray | None = None,
        spread_pids: np.ndarray | None = None,
        variance: float = 0.95,
        seed: int = 0,
    ) -> None:
        from sklearn.mixture import GaussianMixture

        centres, uniq, counts = identity_means(vectors, pids)
        if spread_vectors is None:
            spread_vectors, spread_pids = vectors, pids
        spread_means, spread_uniq, _ = identity_means(spread_vectors, spread_pids)
        resid = spread_vectors - spread_means[np.searchsorted(spread_uniq, spread_pids)]
        # unit photos = centre + residual: where photos scatter wider, centres are shorter. Scaled to the spread
        # identities' length, the centres keep their directions (how identities lie relative to each other)
        centres *= np.sqrt((spread_means**2).sum(1).mean() / (centres**2).sum(1).mean())
        self.dim = vectors.shape[1]
        self.within = resid.T @ resid / (len(resid) - len(spread_uniq))  # unbiased pooled covariance
        self.within_chol = np.linalg.cholesky(self.within + 1e-8 * np.eye(self.dim))
        self.mean = centres.mean(0)
        _, s, vt = np.linalg.svd(centres - self.mean, full_matrices=False)
        var = s**2 / (len(uniq) - 1)
        k = int(np.searchsorted(np.cumsum(var) / var.sum(), variance)) + 1
        self.basis = vt[:k]  # (k, D)
        self.rest_sigma = float(np.sqrt(var[k:].sum() / max(self.dim - k, 1)))
        z = (centres - self.mean) @ self.basis.T
        self.identities, self.spread_identities, self.pca_dims = len(uniq), len(spread_uniq), k
        self.real = structure(vectors, pids, np.random.default_rng(seed))
        self.real["same person"] = structure(spread_vectors, spread_pids, np.random.default_rng(seed))[
            "same person"
        ]
        pid = np.repeat(np.arange(len(uniq)), counts)
        self.tried: list[tuple[int, dict[str, float]]] = []
        for c in (1, 2, 4, 8, 16, 32, 64, 128):
            if 4 * c > len(uniq):
                break
            self.gmm = GaussianMixture(c, covariance_type="diag", reg_covar=1e-6, random_state=seed).fit(z)
            self.rng = np.random.default_rng(seed)
            got = structure(self.templates(self.centres(len(uniq))[pid]), pid, np.random.default_rng(seed))
            self.tried.append((c, got))
            if got["nearest other identity"] >= self.real["nearest other identity"] - 0.01:
                break
        self.components = self.gmm.n_components
        self.rng = np.random.default_rng(seed + 1)

    def centres(self, n: int) -> np.ndarray:
        z, _ = self.gmm.sample(n)
        z = z[self.rng.permutation(n)]  # sklearn returns samples grouped by component
        g = self.rest_sigma * self.rng.standard_normal((n, self.dim))
        g -= (g @ self.basis.T) @ self.basis  # the discarded directions only
        return (self.mean + z @ self.basis + g).astype(np.float32)

    def templates(self, centres: np.ndarray) -> np.ndarray:
        """One new photo of each given centre (rows may repeat)."""
        r = self.rng.standard_normal((len(centres), self.dim)) @ self.within_chol.T
        x = centres + r.astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def identity_means(vectors: np.ndarray, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean of each identity's embeddings, the sorted identities, images per identity)."""
    uniq, inv = np.unique(pids, return_inverse=True)
    counts = np.bincount(inv)
    means = np.zeros((len(uniq), vectors.shape[1]))
    np.add.at(means, inv, vectors.astype(np.float64))
    return means / counts[:, None], uniq, counts


def held_out_identities(pids_train: np.ndarray, n: int, seed: int, extends: int = 0) -> set[int]:
    """The identities the shipped body model's trainer held out of training (``data.val_identities`` and
    ``data.val_seed``, ``data.val_extends`` of ``configs/reid/cpu_val100_256aug_mobilenetv2.yaml``): the same ``holdout_identities`` call on the
    labeled training crops (only their identities matter for the choice)."""
    from reid.data.holdout import holdout_identities
    from reid.data.records import ImageRecord

    _, val = holdout_identities([ImageRecord("", int(p), 0) for p in pids_train], n, seed, extends=extends)
    return {r.pid for r in val.query + val.gallery}


def structure(vectors: np.ndarray, pids: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """What the fit should keep: cosine of two photos of one person, of two persons, and of an identity's
    mean photo direction to its nearest other identity's."""
    uniq, inv = np.unique(pids, return_inverse=True)
    same, diff = [], []
    for _ in range(20_000):
        i = rng.integers(len(vectors))
        mates = np.flatnonzero(inv == inv[i])
        j = rng.choice(mates[mates != i]) if len(mates) > 1 else i
        k = rng.integers(len(vectors))
        same.append(float(vectors[i] @ vectors[j]))
        if inv[k] != inv[i]:
            diff.append(float(vectors[i] @ vectors[k]))
    c = np.zeros((len(uniq), vectors.shape[1]))
    np.add.at(c, inv, vectors)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    sims = c @ c.T
    np.fill_diagonal(sims, -np.inf)
    return {
        "same person": float(np.mean(same)),
        "two persons": float(np.mean(diff)),
        "nearest other identity": float(np.median(sims.max(1))),
    }


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_avg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def generate(
    model: RealLike, n: int, lo: int, hi: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` templates of persons with ``lo``..``hi`` templates each: (vectors, person of each, centres)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(lo, hi + 1, size=n // lo + 1)
    counts = counts[: int(np.searchsorted(np.cumsum(counts), n)) + 1]
    counts[-1] -= counts.sum() - n
    persons = np.repeat(np.arange(len(counts)), counts)
    centres = model.centres(len(counts))
    x = np.empty((n, model.dim), np.float32)
    for s in range(0, n, 100_000):
        x[s : s + 100_000] = model.templates(centres[persons[s : s + 100_000]])
    return x, persons, centres


def exact_best(x: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Row of the best template for each query, exactly (all threads, blocks of templates)."""
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.zeros(len(queries), np.int64)
    for s in range(0, len(x), 200_000):
        sims = queries @ x[s : s + 200_000].T
        j = sims.argmax(1)
        v = sims[np.arange(len(j)), j]
        better = v > best
        best[better], arg[better] = v[better], s + j[better]
    return arg


def timed_identify(
    cache, index, queries: np.ndarray, truth_person: np.ndarray, k: int
) -> tuple[float, float, float, float]:
    """Wall p50 / p99 ms of ``IndexCache.rank_persons`` (the gallery's identify minus SQL), one query per
    call; the calling thread's CPU p50 ms (the search runs on one OpenMP thread, this one: what a query
    costs, whatever else the machine runs); the share of queries whose first person is exact search's."""
    lat, cpu, hits = [], [], 0
    cache.rank_persons(index, queries[:1], k)  # warm-up
    for q, want in zip(queries, truth_person):
        t, c = time.perf_counter(), time.thread_time()
        ranked = cache.rank_persons(index, q[None], k)
        lat.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
        hits += bool(ranked) and ranked[0][0] == want
    p50, p99 = np.percentile(lat, [50, 99])
    return float(p50), float(p99), float(np.percentile(cpu, 50)), hits / len(queries)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="templates (default 1M)")
    p.add_argument(
        "--per-person",
        type=int,
        nargs=2,
        default=[2, 8],
        metavar=("MIN", "MAX"),
        help="templates per person, uniform in [MIN, MAX] (default 2 8: 5 on average)",
    )
    p.add_argument("--queries", type=int, default=1000, help="queries of enrolled persons (new photos)")
    p.add_argument("--strangers", type=int, default=300, help="queries of persons never enrolled")
    p.add_argument("--flat-queries", type=int, default=200, help="queries timed on exact search (slow)")
    p.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"], choices=["flat", "hnsw", "ivf"])
    p.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument(
        "--nlist",
        type=int,
        nargs="+",
        default=[0, -1],
        help="IVF lists (0: the gallery's 2 sqrt(n), as built at start-up; -1: 2 sqrt(n/2), the lists a growing "
        "gallery has just before its next retrain, the slowest it gets)",
    )
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 48, 64])
    p.add_argument("--k", type=int, default=5, help="persons per identify (the search reads max(10k, 64))")
    p.add_argument(
        "--centres",
        choices=["train", "test", "all"],
        default="train",
        help="identities whose means place the synthetic identities: cuhk03-np's training identities (labeled "
        "+ detector boxes; default), the test split's (a look beside, never for choosing), or both",
    )
    p.add_argument(
        "--spread",
        choices=["val", "train", "test", "all"],
        default="val",
        help="identities whose photos give the within-person spread: the shipped model's held-out validation "
        "identities (default: unseen in training, like the people a store enrolls; the trained ones sit "
        "tighter), the training identities, the test split's, or all",
    )
    p.add_argument(
        "--val-identities", type=int, default=100, help="held out when the shipped model was trained"
    )
    p.add_argument("--val-seed", type=int, default=0)
    p.add_argument("--val-extends", type=int, default=50, help="data.val_extends of the model's config")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "body" / "mobilenetv2_cuhk03.pt")
    p.add_argument("--runtime", choices=["onnx", "torch"], default="onnx")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/reid_index_million"),
        help="folder for the real embeddings (computed once per model, minutes)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--growth",
        action="store_true",
        help="instead of the side-by-side table: grow the default auto index to --n while identifying",
    )
    p.add_argument("--growth-batch", type=int, default=100, help="templates per add in --growth")
    p.add_argument(
        "--growth-rate",
        type=float,
        default=5000,
        help="templates per second in --growth (0: as fast as it adds)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import faiss

    from benchmarks.machine import describe
    from gallery.cache import IndexCache
    from gallery.index import IndexConfig

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    real = real_embeddings(args.data, args.checkpoint, args.cache, args.runtime)
    split, pids = real["split"], real["pids"]
    held = held_out_identities(pids[split == 0], args.val_identities, args.val_seed, args.val_extends)
    sets = {
        "train": split <= 1,
        "val": (split <= 1) & np.isin(pids, sorted(held)),
        "test": split >= 2,
        "all": split >= 0,
    }
    keep, spread = sets[args.centres], sets[args.spread]
    t = time.perf_counter()
    model = RealLike(real["vectors"][keep], pids[keep], real["vectors"][spread], pids[spread], seed=args.seed)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    x, persons, centres = generate(model, args.n, *args.per_person, seed=args.seed + 1)
    gen_s = time.perf_counter() - t
    rng = np.random.default_rng(args.seed + 2)
    enrolled = model.templates(centres[rng.integers(0, len(centres), args.queries)])
    strangers = model.templates(model.centres(args.strangers))
    ids = np.arange(1, args.n + 1, dtype=np.int64)  # template ids as the database hands them out
    t = time.perf_counter()
    truth = {"enrolled": persons[exact_best(x, enrolled)], "strangers": persons[exact_best(x, strangers)]}
    truth_s = time.perf_counter() - t
    queries = {"enrolled": enrolled, "strangers": strangers}
    cache = IndexCache(None, IndexConfig(), None)  # only its ranking is used: template -> person map below
    cache.person_of = dict(zip(ids.tolist(), persons.tolist()))
    logger.info(
        "fit %.0f s, generated %d templates in %.0f s, exact truth %.0f s", fit_s, args.n, gen_s, truth_s
    )

    rows = [] if args.growth else kinds_side_by_side(args, model.dim, ids, x, cache, queries, truth)
    growth = grow(args, model.dim, ids, x, cache, queries, truth) if args.growth else None

    print()
    print(describe() + f", faiss {faiss.__version__}")
    print(
        f"FAISS threads: builds {faiss.omp_get_max_threads()} (all, as the gallery builds); identify 1 per query "
        f"(IndexConfig.search_threads={IndexConfig().search_threads}), one query at a time; load average "
        f"1/5/15 min at the end {load_avg()}"
    )
    print(
        f"real embeddings ({model.dim}-d, model {real['model_id']}): identity centres from a "
        f"{model.components}-component Gaussian mixture in {model.pca_dims} PCA dimensions (+ isotropic rest) "
        f"fitted to the means of {model.identities} identities ({args.centres}: {keep.sum()} crops); within-person "
        f"spread: the pooled residual covariance of {model.spread_identities} identities ({args.spread}: "
        f"{spread.sum()} crops)"
    )
    print(f"{'':<26}{'real':>8}{'synthetic':>11}   (cosine; synthetic at the real identity count)")
    synth = model.tried[-1][1]
    for key_ in model.real:
        print(f"{key_:<26}{model.real[key_]:>8.3f}{synth[key_]:>11.3f}")
    print(
        f"{args.n:,} templates of {len(centres):,} persons ({args.per_person[0]}-{args.per_person[1]} each); "
        f"{args.queries} enrolled-person queries (a new photo), {args.strangers} stranger queries; identify k="
        f"{args.k} reads the top {max(args.k * 10, 64)} templates; recall@1 = first person equals exact search's"
    )
    print()
    for i, row in enumerate(rows):
        print_row(row, args.n, header=i == 0)
    if growth:
        print_growth(growth)


def kinds_side_by_side(args, dim, ids, x, cache, queries, truth) -> list[tuple]:
    """Each kind built from all templates at once (what a start-up without a snapshot does), then timed."""
    import faiss

    from gallery.index import IndexConfig, VectorIndex

    rows = []
    for kind in args.kinds:
        variants = {"flat": [(0, None)], "hnsw": [(0, ef) for ef in args.ef_search]}.get(
            kind, [(nl, pr) for nl in args.nlist for pr in args.nprobe]
        )
        for nlist in dict.fromkeys(v[0] for v in variants):
            if nlist < 0:
                nlist = int(2 * np.sqrt(len(ids) / 2))
                variants = [(nlist if v[0] < 0 else v[0], v[1]) for v in variants]
            cfg = IndexConfig(
                kind=kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ivf_nlist=nlist
            )
            index = VectorIndex("body", "bench", dim, cfg)
            load0, rss0 = load_avg(), rss_mib()
            t, cpu = time.perf_counter(), time.process_time()
            index.build(ids, x)  # all FAISS threads, as the gallery builds
            build_s, build_cpu = time.perf_counter() - t, time.process_time() - cpu
            logger.info("%s nlist=%d built in %.0f s (%.0f CPU s)", kind, nlist, build_s, build_cpu)
            size = len(faiss.serialize_index(index.index))
            rss = rss_mib() - rss0
            t = time.perf_counter()
            index.export()  # what a background rebuild copies under the lock (searches wait that long)
            copy_s = time.perf_counter() - t
            for _, param in (v for v in variants if v[0] == nlist):
                if kind == "hnsw":
                    faiss.downcast_index(index.index.index).hnsw.efSearch = param
                    name = f"HNSW M={args.hnsw_m} efC={args.ef_construction} efSearch={param}"
                elif kind == "ivf":
                    index.index.nprobe = param
                    name = f"IVF-flat nlist={index.index.nlist} nprobe={param}"
                else:
                    name = "flat (exact)"
                res = {}
                for qname, qs in queries.items():
                    n_q = min(len(qs), args.flat_queries) if kind == "flat" else len(qs)
                    res[qname] = timed_identify(cache, index, qs[:n_q], truth[qname][:n_q], args.k)
                rows.append((name, build_s, build_cpu, copy_s, size, rss, res, f"{load0} -> {load_avg()}"))
                print_row(rows[-1], args.n, header=len(rows) == 1)
            del index
    return rows


def grow(args, dim, ids, x, cache, queries, truth) -> dict:
    """The gallery's default ``auto`` index fed ``--growth-batch`` templates at a time up to ``--n``, as
    enrolments would, while a second thread identifies one query after another; every switch and retrain
    happens in the background on the way."""
    import threading

    from gallery.index import IndexConfig, VectorIndex

    index = VectorIndex("body", "bench", dim, IndexConfig())
    qs = queries["enrolled"]
    stop, lat = threading.Event(), []

    def reader() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            cache.rank_persons(index, qs[i % len(qs)][None], args.k)
            lat.append((t, (time.perf_counter() - t) * 1000, index.rebuilding is not None))
            i += 1

    events: list[str] = []  # the index logs each swap: kinds, size, seconds in the background, reason

    class Swaps(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "in the background (" in record.getMessage():
                events.append(record.getMessage().split(": ", 1)[1])

    handler = Swaps()
    logging.getLogger("gallery.index").addHandler(handler)
    started = time.perf_counter()
    th = threading.Thread(target=reader)
    th.start()
    try:
        for s in range(0, len(ids), args.growth_batch):
            index.add(ids[s : s + args.growth_batch], x[s : s + args.growth_batch])
            if args.growth_rate:  # enrolments arrive at a rate, not all at once
                time.sleep(
                    max(0.0, started + (s + args.growth_batch) / args.growth_rate - time.perf_counter())
                )
        add_s = time.perf_counter() - started
        index.wait_rebuilt()
    finally:
        stop.set()
        th.join()
        logging.getLogger("gallery.index").removeHandler(handler)
    res = timed_identify(cache, index, qs, truth["enrolled"], args.k)
    ms = np.array([m for _, m, _ in lat])
    during = np.array([m for _, m, busy in lat if busy]) if any(b for _, _, b in lat) else np.zeros(1)
    return {
        "n": len(ids), "batch": args.growth_batch, "rate": args.growth_rate, "add_s": add_s, "total_s": time.perf_counter() - started,
        "events": events, "rebuilds": index.rebuilds, "kind": index.kind,
        "nlist": getattr(index.index, "nlist", None), "searches": len(ms),
        "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
        "p99_during": float(np.percentile(during, 99)), "max_during": float(during.max()), "final": res,
    }  # fmt: skip


def print_growth(g: dict) -> None:
    print(
        f"growth: the default auto index (IndexConfig()) fed {g['batch']} templates per add at {g['rate']:.0f}/s "
        f"up to {g['n']:,} "
        f"({g['add_s']:.0f} s of adds, {g['total_s']:.0f} s until the last background rebuild was in); "
        f"{g['rebuilds']} background rebuilds:"
    )
    for event in g["events"]:
        print(f"  {event}")
    print(
        f"identify in a second thread meanwhile ({g['searches']} queries): p50 {g['p50']:.2f} ms, p99 "
        f"{g['p99']:.2f} ms, max {g['max']:.1f} ms; while a rebuild was in flight p99 {g['p99_during']:.2f} ms, "
        f"max {g['max_during']:.1f} ms"
    )
    p50, p99, cpu, rec = g["final"]
    print(
        f"after: {g['kind']} (nlist {g['nlist']}), identify p50 {p50:.2f} ms, p99 {p99:.2f} ms, CPU p50 "
        f"{cpu:.2f} ms, person recall@1 {rec:.4f} against exact search"
    )


def print_row(row: tuple, n: int, header: bool) -> None:
    if header:
        print(
            f"{'index':<44} {'build s':>8} {'CPU s':>7} {'copy s':>6} {'MiB':>6} {'B/tmpl':>6} {'RSS+MiB':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'CPU p50':>7} {'recall@1':>9} {'stranger p50':>13} {'recall@1':>9}  load avg"
        )
    name, build_s, build_cpu, copy_s, size, rss, res, load = row
    e, s = res["enrolled"], res["strangers"]
    print(
        f"{name:<44} {build_s:8.1f} {build_cpu:7.0f} {copy_s:6.2f} {size / 2**20:6.0f} {size / n:6.0f} {rss:7.0f} {e[0]:7.2f} {e[1]:7.2f} "
        f"{e[2]:7.2f} {e[3]:9.4f} {s[0]:13.2f} {s[3]:9.4f}  {load}",
        flush=True,
    )


if __name__ == "__main__":
    main()

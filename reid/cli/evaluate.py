"""Evaluate an embedding model on a re-ID dataset folder: CMC rank-1/5/10/20, mAP, mINP.

Examples:
  # a trained checkpoint on a Market-1501-layout folder
  reid-eval --data ../shared/data/cuhk03-np --checkpoint runs/light/best.pt
  # an ImageNet-initialised backbone (offline weights), with flip averaging and re-ranking
  reid-eval --data ../shared/data/cuhk03-np --model mobilenetv2 --pretrained deepsort-mobilenetv2 --flip --rerank
  # identity folders without cameras: split by identity, write a JSON report and a CMC plot
  reid-eval --data my_people/ --dataset image_folder --test-fraction 0.5 --checkpoint m.pt --output out/
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from reid.cli.common import make_parser, run, setup_logging
from reid.data import DATASETS, build_dataset
from reid.embedder import Embedder
from reid.errors import ConfigError
from reid.metrics import evaluate_rank, plot_cmc, query_gallery_distances, write_json
from reid.models import MODELS, OFFLINE_WEIGHTS, build_model

logger = logging.getLogger("reid.eval")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("reid-eval", __doc__)
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument("--dataset", default="market1501", help=f"reader: {', '.join(DATASETS.names())}")
    p.add_argument("--test-fraction", type=float, default=None, help="image_folder: split by identity")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="embedding checkpoint saved by the trainer")
    src.add_argument("--model", help=f"untrained architecture: {', '.join(MODELS.names())}")
    p.add_argument("--pretrained", help=f"with --model: 'imagenet', {', '.join(OFFLINE_WEIGHTS)}, or a file")
    p.add_argument("--input-size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    p.add_argument("--flip", action="store_true", help="average features of the image and its mirror")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    p.add_argument("--output", help="folder for results.json, cmc.png, ranked.png and activation maps")
    p.add_argument(
        "--visualize", type=int, default=8, help="with --output: queries shown in ranked.png / cams"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def make_embedder(args: argparse.Namespace) -> Embedder:
    if args.checkpoint:
        return Embedder.from_checkpoint(args.checkpoint, device=args.device, flip=args.flip)
    if args.input_size[0] < 16 or args.input_size[1] < 16:
        raise ConfigError(f"--input-size must be at least 16x16, got {args.input_size}")
    model = build_model(args.model, pretrained=args.pretrained)
    return Embedder.from_model(model, tuple(args.input_size), device=args.device, flip=args.flip)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    kwargs = {"test_fraction": args.test_fraction} if args.test_fraction else {}
    ds = build_dataset(args.dataset, args.data, **kwargs)
    print(ds.summary())
    if not ds.query or not ds.gallery:
        raise ConfigError(
            f"{args.data}: dataset has no query/gallery split (use --test-fraction for image_folder)"
        )
    embedder = make_embedder(args)
    print(
        f"model {embedder.model_id} ({embedder.dim}-d, input {embedder.input_size[0]}x{embedder.input_size[1]})"
    )

    def embed(records, what):
        return embedder.embed(
            [r.path for r in records], batch_size=args.batch_size, progress=f"embedding {what}"
        )

    t0 = time.perf_counter()
    qf, gf = embed(ds.query, "query"), embed(ds.gallery, "gallery")
    t_embed = time.perf_counter() - t0
    distmat = query_gallery_distances(qf, gf, args.metric, args.rerank)
    ids = lambda rs: np.array([r.pid for r in rs])  # noqa: E731
    cams = lambda rs: np.array([r.camid for r in rs])  # noqa: E731
    if not ds.has_cameras:
        logger.warning(
            "camera ids unknown: the same-camera rule cannot be applied; only a query's own image is removed"
        )
    paths = lambda rs: np.array([r.path for r in rs])  # noqa: E731
    res = evaluate_rank(
        distmat,
        ids(ds.query),
        ids(ds.gallery),
        cams(ds.query),
        cams(ds.gallery),
        q_items=paths(ds.query),
        g_items=paths(ds.gallery),
    )
    print(
        f"results ({ds.name}, {len(ds.query)} queries x {len(ds.gallery)} gallery, {args.metric}"
        f"{', flip' if args.flip else ''}{', re-ranked' if args.rerank else ''}):"
    )
    for k, v in res.as_dict().items():
        print(f"  {k:<14} {v:.2%}" if isinstance(v, float) else f"  {k:<14} {v}")
    print(f"  embedding time {t_embed:.1f} s ({(len(qf) + len(gf)) / t_embed:.1f} images/s)")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "results.json",
            {
                "dataset": ds.name,
                "model_id": embedder.model_id,
                **res.as_dict(),
                "cmc": res.cmc[:50],
                "flip": args.flip,
                "rerank": args.rerank,
            },
        )
        plot_cmc(out / "cmc.png", {embedder.model_id: res.cmc})
        if args.visualize:
            from reid.metrics.visualize import activation_pair_png, ranked_grid

            qp, gp = [r.path for r in ds.query], [r.path for r in ds.gallery]
            shown = list(range(min(args.visualize, len(qp))))
            ranked_grid(
                out / "ranked.png",
                distmat,
                qp,
                gp,
                ids(ds.query),
                ids(ds.gallery),
                cams(ds.query),
                cams(ds.gallery),
                queries=shown,
            )
            for qi in shown[:4]:
                activation_pair_png(
                    out / f"cam_query{qi}.png", embedder, qp[qi], gp[int(np.argmin(distmat[qi]))]
                )
        print(
            f"wrote results.json, cmc.png{', ranked.png and activation maps' if args.visualize else ''} to {out}"
        )
    return 0


def cli() -> None:
    raise SystemExit(run(main))


if __name__ == "__main__":
    cli()

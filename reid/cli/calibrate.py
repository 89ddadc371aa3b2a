"""Calibrate a model's open-set decision on validation identities and ship it with the model (its card).

The identities must be ones the model never trained on and no test split: by default, for a checkpoint trained
here, the identities its config held out (``data.val_identities``); for a face model (dlib's, InsightFace's),
a face folder such as CelebA's. A third of them (one image each) become the cohort of never-enrolled people; the rest simulate the
gallery (one template set per identity, strangers against the others) to choose beta and the threshold at the
target false-accept rate. ``--write`` stores the decision in the checkpoint (``extra["decision"]``; the
model_id is unchanged) or, for a face model, in ``reid/face/cards/``.

Examples:
  reid-calibrate --checkpoint runs/cpu_val100_256aug_mobilenetv2/best.pt --write
  reid-calibrate --checkpoint runs/cpu_val256_mobilenetv2/best.pt --rule raw --write
  reid-calibrate --checkpoint model.pt --data ../my-store-crops --far 0.001
  reid-calibrate --face dlib --data ../shared/data/celeba-faces --write
  reid-calibrate --face dlib --data ../shared/data/celeba-faces --enroll-per-id 3
  reid-calibrate --face insightface-w600k-mbf --data ../shared/data/celeba-faces --flip --write
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from reid.cli.common import make_parser, run, setup_logging
from reid.data import holdout_from_config, read_identity_folders
from reid.data.readers import read_extra_train, read_market_folder
from reid.errors import ConfigError, DatasetError
from reid.face import FACE_EMBEDDERS
from reid.metrics.aggregation import AGGREGATIONS, DEFAULT_AGGREGATION
from reid.metrics.open_set_decision import BETAS, calibrate_with_cohort

logger = logging.getLogger(__name__)


def validation_records(config: dict) -> tuple[list[str], list[int]]:
    """Every image (labeled and extra views) of the identities a training config held out for validation."""
    d = config["data"]
    if not d.get("val_identities"):
        raise ConfigError(
            "this checkpoint's training config held out no validation identities (data.val_identities); "
            "pass --data with identities it never trained on"
        )
    root = Path(d["root"])
    train = read_market_folder(root / "bounding_box_train", "train")
    extra = [r for folder in d.get("extra_train") or [] for r in read_extra_train(folder)]
    _, val = holdout_from_config(train, d)
    held = {r.pid for r in val.query + val.gallery}
    recs = [r for r in train + extra if r.pid in held]
    return [r.path for r in recs], [r.pid for r in recs]


def main(argv: list[str] | None = None) -> int:
    p = make_parser("reid-calibrate", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an embedding checkpoint (body or face) trained here")
    src.add_argument(
        "--face",
        choices=FACE_EMBEDDERS.names(),
        help="a face model of reid.face.FACE_EMBEDDERS (its card goes to reid/face/cards)",
    )
    p.add_argument("--data", help="identity folders (root/<person>/<image>) never trained on")
    p.add_argument("--far", type=float, default=0.01, help="target false-accept rate of strangers")
    p.add_argument(
        "--rule",
        choices=["auto", "raw"],
        default="auto",
        help="auto: the beta (margin weight) naming the most validation probes, 0 included; raw: the best score "
        "alone (its size table extrapolates from small validation galleries more safely than a margin's)",
    )
    p.add_argument("--enroll-per-id", type=int, default=1)
    p.add_argument("--cohort-fraction", type=float, default=1 / 3)
    p.add_argument("--flip", action="store_true", help="flip-averaged embeddings (a different model_id)")
    p.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        help="how --enroll-per-id templates score a probe (default: the gallery's for the modality: "
        + ", ".join(f"{m} {a}" for m, a in DEFAULT_AGGREGATION.items())
        + ")",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache", help="faces only: .npz of this model's embeddings in --data's order (plain / flip)"
    )
    p.add_argument("--write", action="store_true", help="store the decision with the model")
    p.add_argument("--json", help="also write the result as JSON here")
    args = p.parse_args(argv)
    setup_logging()
    if args.face and not args.data:
        raise ConfigError("--face needs --data (identity folders the model never trained on)")
    if args.checkpoint:
        from reid.embedder import Embedder

        embedder = Embedder.from_checkpoint(args.checkpoint, flip=args.flip)
        if args.data:
            recs = read_identity_folders(args.data)
            paths, labels, data = [r.path for r in recs], [r.pid for r in recs], str(args.data)
        else:
            cfg = embedder.meta.extra.get("config")
            if not cfg:
                raise ConfigError(f"{args.checkpoint}: no training config inside; pass --data")
            paths, labels = validation_records(cfg)
            d = cfg["data"]
            data = (
                f"{d['val_identities']} validation identities held out of {d['root']} "
                f"(+ {', '.join(d.get('extra_train') or []) or 'no extra views'}), val_seed {d.get('val_seed', 0)}"
                + (f", extending the {d['val_extends']} held out before" if d.get("val_extends") else "")
            )
        emb = embedder.embed(paths, progress="embedding validation identities")
        model_id = embedder.model_id
    else:
        recs = read_identity_folders(args.data)
        paths, labels, data = [r.path for r in recs], [r.pid for r in recs], str(args.data)
        if args.cache and Path(args.cache).is_file():
            z = np.load(args.cache)
            emb = z["flip" if args.flip else "plain"]
            if len(emb) != len(paths):
                raise DatasetError(
                    f"{args.cache}: {len(emb)} embeddings for {len(paths)} images in {args.data}"
                )
            if emb.shape[1] != FACE_EMBEDDERS.get(args.face).dim:
                raise DatasetError(
                    f"{args.cache}: {emb.shape[1]}-d embeddings, but face model {args.face!r} gives "
                    f"{FACE_EMBEDDERS.get(args.face).dim}-d ones (a cache of another model?)"
                )
        else:
            emb = FACE_EMBEDDERS.get(args.face)(on_no_face="center", flip=args.flip).embed(paths)
        model_id = FACE_EMBEDDERS.get(args.face).plain_model_id + ("-flip" if args.flip else "")
    labels = np.asarray(labels)
    modality = embedder.meta.modality if args.checkpoint else "face"
    aggregation = args.aggregation or DEFAULT_AGGREGATION.get(modality, "max")
    betas = (0.0,) if args.rule == "raw" else BETAS
    cal, cohort = calibrate_with_cohort(
        emb, labels, args.far, args.enroll_per_id, args.cohort_fraction, args.seed, betas, aggregation
    )
    print(f"model {model_id}: {len(np.unique(labels))} identities, {len(labels)} images ({data})")
    if len(betas) > 1:
        print(f"cohort {len(cohort)} identities; the other {len(np.unique(labels)) - len(cohort)} chose beta")
    print(f"{'beta':>6} {'DIR at FAR ' + format(args.far, 'g'):>16}")
    for beta, d in cal.by_beta.items():
        print(f"{beta:6.2f} {d:16.2%}{'  <- chosen' if beta == cal.beta else ''}")
    print(f"{'raw rule (no cohort): threshold measured on all ' if cal.rule == 'raw' else 'calibrated on '}"
          f"{cal.n_identities} identities ({cal.n_mated} mated probes, {cal.n_strangers} stranger probes, each "
          f"against the {cal.gallery_size} others enrolled; {args.enroll_per_id} enrolled each, {aggregation} of "
          f"a person's templates)")  # fmt: skip
    print(f"threshold {cal.threshold:.4f} on best - {cal.beta:g} x runner-up; strangers accepted "
          f"{cal.measured_far:.2%}, mated named {cal.measured_dir:.2%} (rank-1 {cal.rank1:.2%})")  # fmt: skip
    if cal.by_size and cal.size_check:
        c = cal.size_check
        print(f"size check (validation only): the size table built on {c['fitted_persons']} of the validation "
              f"gallery's persons and read at all {c['read_persons']} accepts {c['check_mean']:.2%} of their "
              f"strangers (sd {c['check_sd']:.2%}, worst {c['check_max']:.2%} over {c['splits']} halves) for a "
              f"{args.far:g} target")  # fmt: skip
        if c["solved_for"] < args.far:
            m = c["read_persons"]
            print(f"so past {m} persons the table is solved for {c['solved_for']:.3g} (grown in from {m} to "
                  f"{2 * m} persons, whole from there), where the same check gives {c['fitted_mean']:.2%} (fitted "
                  f"on those strangers: on target by construction); a store's gallery may lie further out, so "
                  f"this is a floor on the uncertainty")  # fmt: skip
    card = {**cal.as_dict(), "data": data, "cohort": cohort, "seed": args.seed}
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in card.items() if k != "cohort"}, indent=1))
    if args.write:
        if args.checkpoint:
            from reid.decision_card import attach_to_checkpoint

            attach_to_checkpoint(args.checkpoint, card, flip=args.flip)
            print(f"wrote the decision for {model_id} into {args.checkpoint} (its weights unchanged)")
        else:
            from reid.decision_card import write_card

            print(f"wrote {write_card(model_id, card)}")
    return 0


def cli() -> None:
    raise SystemExit(run(main))


if __name__ == "__main__":
    cli()

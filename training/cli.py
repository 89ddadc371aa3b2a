"""Train, evaluate and export re-ID and face embedding models from a YAML config.

Examples:
  python -m training train --config configs/reid/light_mobilenetv2.yaml
  python -m training train --config configs/reid/bot_r50.yaml optimizer.lr=0.0007 train.epochs=60
  python -m training train --config configs/reid/light_mobilenetv2.yaml --resume runs/light_mobilenetv2/last.pt
  torchrun --nproc_per_node=2 -m training train --config configs/reid/light_osnet_x025.yaml
  python -m training evaluate --checkpoint runs/light_mobilenetv2/best.pt --config configs/reid/light_mobilenetv2.yaml
  python -m training export --checkpoint models/body/mobilenetv2_cuhk03.pt --out exported/ --int8
  python -m training export --checkpoint runs/light_mobilenetv2/best.pt --out exported/ --int8 \\
      --calibration-images ../shared/data/cuhk03-np/bounding_box_train --int8-exclude early,head
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from reid.cli.common import make_parser, run, setup_logging
from reid.errors import ConfigError
from training.config import load_config

logger = logging.getLogger("training")


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m training", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train from a config (key=value overrides after the options)")
    t.add_argument("--config", required=True)
    t.add_argument("--resume", help="a last.pt training state to continue from")
    t.add_argument("--device")
    t.add_argument("overrides", nargs="*", help="config overrides, e.g. optimizer.lr=0.001")
    e = sub.add_parser("evaluate", help="evaluate an embedding checkpoint with a config's dataset and eval")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("overrides", nargs="*")
    x = sub.add_parser("export", help="TorchScript + ONNX (+ INT8 ONNX) of an embedding checkpoint")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--int8", action="store_true", help="also write a statically quantised INT8 ONNX model")
    x.add_argument(
        "--calibration-images",
        help="folder of training images for INT8 calibration (default: the training identities of the "
        "checkpoint's config; its held-out validation identities are never used to calibrate)",
    )
    x.add_argument("--calibration-count", type=int, default=256, help="INT8 calibration images (sampled)")
    x.add_argument(
        "--int8-exclude",
        default="early",  # training.export.DEFAULT_INT8_EXCLUDE (not imported: it loads torch before --help)
        help="comma-separated presets (first_conv, early, depthwise, head) or node names kept in float; "
        "'' quantises every Conv (default: %(default)s)",
    )
    x.add_argument("--int8-calibrate", default="percentile", choices=["percentile", "minmax", "entropy"])
    x.add_argument("--int8-format", default="qdq", choices=["qdq", "qoperator"])
    x.add_argument(
        "--data-root", help="dataset root for the checkpoint's held-out identities (default: its config's)"
    )
    args = p.parse_args(argv)
    setup_logging()
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)

    if args.cmd == "train":
        from training.engine import Trainer

        cfg = load_config(args.config, args.overrides)
        result = Trainer(cfg, resume=args.resume, device=args.device).train()
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                json.dumps(
                    {
                        "epochs": result["epoch"],
                        "best": result["best"],
                        "last": result["history"][-1] if result["history"] else {},
                    },
                    indent=2,
                )
            )
    elif args.cmd == "evaluate":
        from reid.models import load_checkpoint
        from training.engine import Trainer

        cfg = load_config(args.config, args.overrides)
        model, _ = load_checkpoint(args.checkpoint)
        # The trainer writes its config into output_dir; evaluating must leave the checkpoint's folder as it was
        # (it may be models/body/ in the repo), and a model to start from is not needed to evaluate another.
        cfg["train"] = {**cfg["train"], "init_weights": None}
        with tempfile.TemporaryDirectory() as out:
            cfg["output_dir"] = out
            trainer = Trainer(cfg, device="cpu")
            trainer.model.load_state_dict(model.state_dict())
            print(json.dumps(trainer.evaluate(), indent=2))
    elif args.cmd == "export":
        from training.export import export_onnx, export_torchscript

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            export_torchscript(args.checkpoint, out / "model.ts"),
            export_onnx(args.checkpoint, out / "model.onnx"),
        ]
        if args.int8:
            paths.append(_export_int8(args, out))
        for path in paths:
            print(f"wrote {path}")
    return 0


def _export_int8(args, out: Path) -> Path:
    """``export --int8``: calibrate on training identities, measure the card on the held-out ones."""
    import random

    from reid.images import image_files_in
    from reid.models import load_checkpoint
    from training.export import export_int8, held_out_split

    _, meta = load_checkpoint(args.checkpoint)
    config = meta.extra.get("config") or {}
    split = held_out_split(config, args.data_root)
    held = {r.pid for r in split[3]} if split else set()
    if args.calibration_images:
        folder = Path(args.calibration_images)
        files = [str(f) for f in image_files_in(folder)]
        if not files:
            raise ConfigError(f"--calibration-images {folder}: no images found")
        if held:  # validation identities choose and report; they never calibrate
            files = [f for f in files if _pid(f) not in held]
    elif split:
        files = [r.path for r in split[0]]
    else:
        raise ConfigError(
            "--int8 needs --calibration-images (a folder of training crops): the checkpoint's config held out "
            "no validation identities to tell training images from"
        )
    calibration = random.Random(0).sample(files, min(args.calibration_count, len(files)))
    if split is None:
        logger.warning("the checkpoint's config held out no identities: the INT8 model gets no measured card")
    d = config.get("data") or {}
    data = (
        f"{d.get('val_identities')} identities held out of {args.data_root or d.get('root')} "
        f"(val_seed {d.get('val_seed', 0)}"
        + (f", val_extends {d['val_extends']}" if d.get("val_extends") else "")
        + f"); calibrated on {len(calibration)} training-identity images"
    )
    exclude = tuple(e for e in args.int8_exclude.split(",") if e)
    path, model_id, card = export_int8(
        args.checkpoint,
        out / "model.onnx",
        out / "model.int8.onnx",
        calibration,
        split[1:] if split else None,
        data=data,
        exclude=exclude,
        calibrate=args.int8_calibrate,
        quant_format=args.int8_format,
    )
    print(f"INT8 model_id {model_id}")
    if card:
        v = card["validation"]
        print(
            f"validation ({v['queries']} queries / {v['gallery']} gallery): rank-1 {v['int8']['rank1']:.2%} "
            f"(fp32 {v['fp32']['rank1']:.2%}), mAP {v['int8']['mAP']:.2%} (fp32 {v['fp32']['mAP']:.2%}); "
            f"cosine to fp32 mean {v['cosine_to_fp32']['mean']:.4f}, min {v['cosine_to_fp32']['min']:.4f}; "
            f"decision threshold {card['decision']['threshold']:.4f} on the INT8 vectors"
        )
    return path


def _pid(path: str) -> int | None:
    from reid.data.readers import parse_market_name
    from reid.errors import DatasetError

    try:
        return parse_market_name(Path(path))[0]
    except DatasetError:  # not a Market-style name: it cannot be a held-out identity's file
        return None


def cli() -> None:
    raise SystemExit(run(main))

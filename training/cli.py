"""Train, evaluate and export re-ID and face embedding models from a YAML config.

Examples:
  python -m training train --config configs/reid/light_mobilenetv2.yaml
  python -m training train --config configs/reid/bot_r50.yaml optimizer.lr=0.0007 train.epochs=60
  python -m training train --config configs/reid/light_mobilenetv2.yaml --resume runs/light_mobilenetv2/last.pt
  torchrun --nproc_per_node=2 -m training train --config configs/reid/light_osnet_x025.yaml
  python -m training evaluate --checkpoint runs/light_mobilenetv2/best.pt --config configs/reid/light_mobilenetv2.yaml
  python -m training export --checkpoint runs/light_mobilenetv2/best.pt --out exported/ --int8 \\
      --calibration-images ../shared/data/cuhk03-np/bounding_box_train
"""

from __future__ import annotations

import json
import logging
import os
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
    x.add_argument("--calibration-images", help="folder of training images for INT8 calibration")
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
        cfg["output_dir"] = str(Path(args.checkpoint).parent)
        trainer = Trainer(cfg, device="cpu")
        model, _ = load_checkpoint(args.checkpoint)
        trainer.model.load_state_dict(model.state_dict())
        print(json.dumps(trainer.evaluate(), indent=2))
    elif args.cmd == "export":
        from training.export import export_onnx, export_torchscript, quantize_onnx_int8

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            export_torchscript(args.checkpoint, out / "model.ts"),
            export_onnx(args.checkpoint, out / "model.onnx"),
        ]
        if args.int8:
            from reid.images import image_files_in
            from training.export import calibration_batch

            if not args.calibration_images:
                raise ConfigError("--int8 needs --calibration-images (a folder of ~200 training crops)")
            folder = Path(args.calibration_images)
            files = image_files_in(folder)[:256]
            if not files:
                raise ConfigError(f"--calibration-images {folder}: no images found")
            calib = calibration_batch(args.checkpoint, [str(f) for f in files])
            paths.append(quantize_onnx_int8(out / "model.onnx", out / "model.int8.onnx", calib))
        for path in paths:
            print(f"wrote {path}")
    return 0


def cli() -> None:
    raise SystemExit(run(main))

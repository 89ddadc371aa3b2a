"""Embed images with a checkpoint and save the vectors (``.npy``) with their paths and ``model_id`` (``.json``).

Examples:
  reid-embed --checkpoint model.pt --images crops/ --output crops_emb
  reid-embed --checkpoint model.pt --images a.jpg b.jpg --flip --output two
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reid.cli.common import make_parser, run, setup_logging
from reid.embedder import Embedder
from reid.errors import DatasetError
from reid.images import image_files_in


def main(argv: list[str] | None = None) -> int:
    p = make_parser("reid-embed", __doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--images", nargs="+", required=True, help="image files and/or folders (searched recursively)"
    )
    p.add_argument("--output", required=True, help="output prefix: writes PREFIX.npy and PREFIX.json")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--flip", action="store_true")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    setup_logging()
    paths: list[Path] = []
    for item in map(Path, args.images):
        if item.is_dir():
            paths += image_files_in(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise DatasetError(f"{item}: no such file or folder")
    if not paths:
        raise DatasetError(f"no image files found in {' '.join(args.images)}")
    embedder = Embedder.from_checkpoint(args.checkpoint, device=args.device, flip=args.flip)
    vectors = embedder.embed([str(x) for x in paths], batch_size=args.batch_size, progress=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_suffix(".npy"), vectors)
    meta = {
        "model_id": embedder.model_id,
        "dim": embedder.dim,
        "flip": args.flip,
        "paths": [str(x) for x in paths],
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(
        f"wrote {len(paths)} x {embedder.dim} embeddings of {embedder.model_id} to {out.with_suffix('.npy')}"
    )
    return 0


def cli() -> None:
    raise SystemExit(run(main))


if __name__ == "__main__":
    cli()

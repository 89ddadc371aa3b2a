"""Gallery command line: manage persons and templates in a database, identify, calibrate.

Examples:
  python -m gallery --db gallery.db init
  python -m gallery --db gallery.db enroll --name "Ann Lee" --modality face --images ann1.jpg ann2.jpg
  python -m gallery --db gallery.db enroll --person 3 --embeddings vecs.npy --model-id my-model --modality body
  python -m gallery --db gallery.db identify --modality face --image query.jpg
  python -m gallery --db gallery.db list
  python -m gallery --db gallery.db show 3
  python -m gallery --db gallery.db merge 3 7          # keep 3, fold 7 into it
  python -m gallery --db gallery.db delete 7
  python -m gallery --db gallery.db calibrate --modality face --model-id dlib-resnet-v1-128 \\
      --embeddings calib.npy --labels calib_labels.txt --far 0.001
  python -m gallery --db postgresql://user@host/db rebuild-index
Face images are embedded with --face-model's model (reid.face; default dlib's); body images need --body-checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from gallery.errors import GalleryError
from gallery.results import PersonInfo
from gallery.service import Gallery
from reid.cli.common import add_face_flip_option, make_parser, run, setup_logging


def _embedders(args: argparse.Namespace, need: str | None) -> dict:
    out = {}
    if need == "body":
        if not args.body_checkpoint:
            raise GalleryError("body images need --body-checkpoint (an embedding checkpoint)")
        from reid.embedder import Embedder

        out["body"] = Embedder.from_checkpoint(args.body_checkpoint)
    return out


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# Deeper stored JSON (metadata, consent) is shown as a placeholder: printing recurses once per level, and one
# person's 900-deep metadata must not take the listing of the whole gallery down with a RecursionError.
MAX_SHOWN_DEPTH = 64


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether the containers (dicts, lists) in ``value`` nest more than ``limit`` levels (iterative, so any
    depth can be measured)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def person_record(info: PersonInfo, max_depth: int = MAX_SHOWN_DEPTH) -> dict[str, Any]:
    """A person as a printable dict; a field nested deeper than ``max_depth`` becomes a marked placeholder."""
    out: dict[str, Any] = {}
    for f in fields(info):
        value = getattr(info, f.name)
        if nests_deeper_than(value, max_depth):
            value = f"<{f.name}: too deep to show (nesting > {max_depth})>"
        out[f.name] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = make_parser("python -m gallery", __doc__)
    p.add_argument("--db", default="gallery.db", help="SQLite file or database URL")
    p.add_argument("--body-checkpoint", help="embedding checkpoint for body images")
    add_face_flip_option(p, "on, unless the gallery holds plain face templates only")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("init", help="create or migrate the database")
    e = sub.add_parser("enroll", help="add templates to a person (new unless --person)")
    e.add_argument("--person", type=int)
    e.add_argument("--name")
    e.add_argument("--external-id")
    e.add_argument("--modality", choices=["face", "body"], default="face")
    e.add_argument("--images", nargs="+")
    e.add_argument("--embeddings", help=".npy of unit vectors (N, D)")
    e.add_argument("--model-id")
    i = sub.add_parser("identify", help="who is this?")
    i.add_argument("--modality", choices=["face", "body"], default="face")
    i.add_argument("--image")
    i.add_argument("--embedding", help=".npy of one unit vector")
    i.add_argument("--model-id")
    i.add_argument("-k", type=int, default=5)
    i.add_argument("--threshold", type=float)
    ls = sub.add_parser("list", help="list persons")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--offset", type=int, default=0)
    sh = sub.add_parser("show", help="one person")
    sh.add_argument("person", type=int)
    m = sub.add_parser("merge", help="merge REMOVE into KEEP")
    m.add_argument("keep", type=int)
    m.add_argument("remove", type=int)
    d = sub.add_parser("delete", help="erase a person (templates, sightings, index entries)")
    d.add_argument("person", type=int)
    c = sub.add_parser(
        "calibrate",
        help="calibrate a model's open-set decision from labelled embeddings of people NOT enrolled "
        "(overrides the model card's)",
    )
    c.add_argument("--modality", choices=["face", "body"], required=True)
    c.add_argument("--model-id", required=True)
    c.add_argument("--embeddings", required=True, help=".npy (N, D)")
    c.add_argument("--labels", required=True, help="text file, one label per line")
    c.add_argument("--far", type=float, default=1e-2, help="target false-accept rate of strangers")
    c.add_argument(
        "--rule",
        choices=["margin", "raw"],
        default="margin",
        help="margin: best - beta x runner-up (default); raw: the best score alone",
    )
    c.add_argument("--enroll-per-id", type=int, default=1, help="templates each person will be enrolled with")
    sub.add_parser("rebuild-index", help="rebuild every index from the database")
    sub.add_parser("check", help="compare database and index template counts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()

    need = None
    if args.cmd in ("enroll", "identify") and (getattr(args, "images", None) or getattr(args, "image", None)):
        need = args.modality
    with Gallery(args.db, embedders=_embedders(args, need)) as g:
        if need == "face":  # plain or flip faces: the gallery's stored face templates have a say
            from reid.face import build_face_embedder

            g.add_embedder(build_face_embedder(args.face_model, args.face_flip, g.model_ids("face")))
        _run(g, args)
    return 0


def _run(g: Gallery, args: argparse.Namespace) -> None:
    """Carry out one subcommand on an open gallery."""
    if args.cmd == "init":
        print(f"database ready: {g.engine.url.render_as_string(hide_password=True)}")
    elif args.cmd == "enroll":
        emb = _load_npy(args.embeddings) if args.embeddings else None
        r = g.enroll(
            args.person,
            images=args.images,
            embeddings=emb,
            modality=args.modality,
            model_id=args.model_id,
            display_name=args.name,
            external_id=args.external_id,
            sources=args.images,
        )
        _print(asdict(r))
    elif args.cmd == "identify":
        emb = _load_npy(args.embedding) if args.embedding else None
        r = g.identify(
            args.image,
            embedding=emb,
            modality=args.modality,
            model_id=args.model_id,
            k=args.k,
            threshold=args.threshold,
        )
        _print(asdict(r))
    elif args.cmd == "list":
        _print([person_record(x) for x in g.list_persons(args.offset, args.limit)])
    elif args.cmd == "show":
        _print(person_record(g.get_person(args.person)))
    elif args.cmd == "merge":
        _print(person_record(g.merge(args.keep, args.remove)))
    elif args.cmd == "delete":
        print(f"deleted person {args.person} and {g.delete_person(args.person)} templates")
    elif args.cmd == "calibrate":
        emb = _load_npy(args.embeddings)
        labels = [x.strip() for x in Path(args.labels).read_text().splitlines() if x.strip()]
        res = g.calibrate_threshold(
            args.modality,
            args.model_id,
            emb,
            labels,
            args.far,
            rule=args.rule,
            enroll_per_id=args.enroll_per_id,
        )
        _print(asdict(res))
    elif args.cmd == "rebuild-index":
        print(f"rebuilt {len(g.rebuild_index())} index(es)")
    elif args.cmd == "check":
        _print(g.check_consistency())


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError) as e:
        raise GalleryError(f"{path}: cannot read embeddings ({e})") from e


def cli() -> None:
    sys.exit(run(main))

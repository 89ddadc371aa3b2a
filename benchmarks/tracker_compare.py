"""Trackers side by side on the lab videos, through the whole camera pipeline (HOG people, the shipped body model,
a fresh gallery per tracker): tracks, global ids, fragments and frames/s.

The videos have no box annotations, so identity switches cannot be counted frame by frame; what is known is how
many people each video shows (Single1: 1, Double1: 2, from ../shared/data/README.md). ``tracks`` = tracks
the tracker ended with at least ``min_hits`` detections (``CameraStats.tracked``, named or not);
``fragments`` = those beyond the people in view (a person split into several tracks); ``named`` = tracks
given a global id (the identity policy gives none to a short fragment beside a named track); ``ids`` =
distinct global ids the pipeline gave in that video (more than the people: someone was split into a new
identity; fewer: two people merged).

Examples:
    python benchmarks/tracker_compare.py
    OMP_NUM_THREADS=1 python benchmarks/tracker_compare.py --every 2 --trackers iou bytetrack
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from gallery import Gallery
from reid.embedder import Embedder
from services.camera.detectors import DETECTORS
from services.camera.pipeline import CameraPipeline, PipelineConfig
from services.camera.sources import VideoSource
from services.camera.tracker import TRACKERS
from services.settings import body_checkpoint

LAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "camera-feeds" / "lab"
PEOPLE = {"Single1": 1, "Double1": 2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lab", type=Path, default=LAB)
    p.add_argument(
        "--every", type=int, default=3, help="process one frame in N (the README's camera command: 3)"
    )
    p.add_argument("--trackers", nargs="+", default=["iou", "bytetrack"], choices=TRACKERS.names())
    args = p.parse_args(argv)
    embedder = Embedder.from_checkpoint(body_checkpoint(), device="cpu")
    print(describe())
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; HOG people detector; 1 frame in {args.every}; "
          f"body model {embedder.model_id}; one fresh gallery per tracker (cam1 = Single1, then cam2 = Double1)")  # fmt: skip
    print(
        f"{'tracker':<10} {'video':<8} {'people':>6} {'tracks':>6} {'fragments':>9} {'named':>5} {'ids':>4} "
        f"{'frames/s':>9}"
    )
    for name in args.trackers:
        with (
            tempfile.TemporaryDirectory() as d,
            Gallery(f"{d}/g.db", index_dir=None, embedders={"body": embedder}) as g,
        ):
            pipe = CameraPipeline(g, embedder, DETECTORS.build("hog"), PipelineConfig(tracker=name))
            for cam, video in (("cam1", "Single1"), ("cam2", "Double1")):
                stats = pipe.run(VideoSource(str(args.lab / f"{video}.mp4"), cam, every=args.every))
                tracks = stats.tracked
                ids = len({e["global_id"] for e in stats.events})
                fps = stats.frames * args.every / stats.seconds  # input frames per second
                print(f"{name:<10} {video:<8} {PEOPLE[video]:>6} {tracks:>6} {max(0, tracks - PEOPLE[video]):>9} "
                      f"{stats.tracks:>5} {ids:>4} {fps:>9.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

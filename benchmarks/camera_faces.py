"""Faces a ceiling camera gives: which detector finds them in the head region of each detected person.

For every processed frame of each lab video, people are found with the pipeline's HOG people detector; the top
``--head`` part of each person box is enlarged ``--scale`` times (what the camera pipeline does) and given to
each face detector. Reports per video and detector: head regions searched, faces found, faces at least
``--min-px`` wide in the frame (what the pipeline uses), and milliseconds per head region.

Examples:
    python benchmarks/camera_faces.py
    python benchmarks/camera_faces.py --every 3 --scale 4 --detectors mtcnn hog cnn
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.face import FaceDetector
from services.camera.detectors import HogPeopleDetector
from services.camera.sources import VideoSource

LAB = Path(__file__).resolve().parents[2] / "shared/data/camera-feeds/lab"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", nargs="+", default=[str(LAB / "Single1.mp4"), str(LAB / "Double1.mp4")])
    ap.add_argument("--every", type=int, default=6, help="process 1 frame in N")
    ap.add_argument("--head", type=float, default=0.3, help="top fraction of a person box searched")
    ap.add_argument(
        "--scale", type=float, default=3.0, help="enlargement of the head region before detection"
    )
    ap.add_argument("--min-px", type=int, default=16, help="face width in the frame to count as usable")
    ap.add_argument("--detectors", nargs="+", default=["mtcnn", "hog"], choices=["mtcnn", "hog", "cnn"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    people = HogPeopleDetector(max_side=640)
    detectors = {name: FaceDetector(name, upsample=0, retry_upsample=False) for name in args.detectors}
    print(describe())
    print(f"head region: top {args.head:.0%} of each person box, enlarged {args.scale:g}x; usable: face >= "
          f"{args.min_px} px wide in the frame")  # fmt: skip
    print(
        f"{'video':<12} {'detector':<8} {'heads':>6} {'found':>6} {'usable':>7} {'median px':>9} {'ms/head':>8}"
    )
    for video in args.videos:
        heads = []
        for frame in VideoSource(video, Path(video).stem, every=args.every):
            for x1, y1, x2, y2, _ in people.detect(frame.image):
                x1, y1 = max(0, int(x1)), max(0, int(y1))
                region = frame.image[y1 : y1 + int(args.head * (y2 - y1)), x1 : int(x2)]
                if region.size:
                    heads.append(
                        cv2.resize(region, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_CUBIC)
                    )
        for name, det in detectors.items():
            t0 = time.perf_counter()
            widths = []
            for h in heads:
                faces = det.detect(h)
                if faces:
                    widths.append((faces[0].box[2] - faces[0].box[0]) / args.scale)
            ms = 1000 * (time.perf_counter() - t0) / max(len(heads), 1)
            usable = sum(w >= args.min_px for w in widths)
            med = sorted(widths)[len(widths) // 2] if widths else float("nan")
            print(
                f"{Path(video).stem:<12} {name:<8} {len(heads):>6} {len(widths):>6} {usable:>7} {med:>9.1f} {ms:>8.1f}"
            )


if __name__ == "__main__":
    main()

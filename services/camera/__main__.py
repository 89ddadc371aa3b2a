"""Run cameras through the gallery: people are tracked per camera and matched across cameras by body.

Examples:
  python -m services.camera --db gallery.db --body-checkpoint models/body.pt \\
      --video ../shared/data/camera-feeds/lab/Single1.mp4:cam1 --video ../shared/data/camera-feeds/lab/Double1.mp4:cam2 \\
      --every 3 --events events.jsonl --annotate out/
  python -m services.camera --video rtsp://10.0.0.5/stream1:door --threshold 0.75
Without --body-checkpoint the body model shipped in models/body/ is used (REID_BODY_CHECKPOINT if set). The body
model runs on ONNX Runtime (its export cached in ~/.cache/reid/onnx) unless --body-runtime torch or
REID_BODY_RUNTIME=torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gallery import Gallery
from reid.cli.common import add_face_flip_option, make_parser, run, setup_logging
from reid.embedder import RUNTIMES
from reid.errors import ConfigError
from services.camera.detectors import DETECTORS
from services.camera.pipeline import CameraPipeline, PipelineConfig
from services.camera.sources import parse_camera
from services.camera.status import StatusWriter
from services.camera.tracker import TRACKERS


def _parser():
    p = make_parser("python -m services.camera", __doc__)
    p.add_argument("--video", action="append", required=True, help="URI:CAMERA_ID (file, rtsp:// or http://)")
    p.add_argument("--db", default="gallery.db")
    p.add_argument(
        "--body-checkpoint",
        help="body model (default: REID_BODY_CHECKPOINT, else the shipped models/body/ one)",
    )
    p.add_argument(
        "--body-runtime",
        choices=RUNTIMES,
        help="where the body model runs: onnx (ONNX Runtime, REID_ONNX_THREADS threads) or torch "
        "(default: REID_BODY_RUNTIME, else onnx)",
    )
    p.add_argument("--detector", default="hog", choices=DETECTORS.names())
    p.add_argument("--tracker", default="bytetrack", choices=TRACKERS.names())
    p.add_argument("--every", type=int, default=1, help="process one frame in N")
    p.add_argument("--threshold", type=float, default=None, help="body match threshold (default: calibrated)")
    p.add_argument("--no-enroll", action="store_true", help="only recognise people already in the gallery")
    p.add_argument("--events", help="JSON-lines event file (default: stdout)")
    p.add_argument("--annotate", help="folder for annotated videos")
    p.add_argument(
        "--status-dir",
        default=os.environ.get("REID_CAMERA_STATUS_DIR"),
        help="folder for each camera's latest annotated frame and status (the web page's camera tiles; the API "
        "reads the same folder from REID_CAMERA_STATUS_DIR)",
    )
    p.add_argument(
        "--faces", action="store_true", help="also look for faces (--face-model) and match by face first"
    )
    p.add_argument(
        "--face-detector",
        choices=["mtcnn", "hog", "cnn"],
        default="mtcnn",
        help="face detector in each track's (enlarged) head region: mtcnn finds the small, turned faces of a "
        "ceiling camera; hog is dlib's (needs ~80 px faces)",
    )
    p.add_argument(
        "--face-threshold", type=float, default=None, help="face match threshold (default: calibrated)"
    )
    add_face_flip_option(p, "on, unless the gallery holds plain face templates only")
    p.add_argument(
        "--no-blur", action="store_true", help="annotated video: do not blur people without consent"
    )
    p.add_argument("--realtime", action="store_true", help="play files at their frame rate (a live camera)")
    p.add_argument("--flip", action="store_true", help="average body embeddings of each crop and its mirror")
    p.add_argument(
        "--no-reassociate",
        action="store_true",
        help="keep a track's early match even when its whole-track embedding says otherwise",
    )
    return p


def _check_decisions(g: Gallery, args, body_id: str, face_embedder) -> None:
    """Stop before any frame when a model has no decision (no card, no calibration, no flag)."""
    if args.threshold is None and g.decision_for("body", body_id) is None:
        raise ConfigError(
            f"no body decision for {body_id} (no model card, no calibration in {args.db}): "
            "calibrate one (reid-calibrate / python -m gallery calibrate) or pass --threshold"
        )
    if (
        face_embedder
        and args.face_threshold is None
        and g.decision_for("face", face_embedder.model_id) is None
    ):
        raise ConfigError(
            f"no face decision for {face_embedder.model_id}: calibrate one or pass --face-threshold"
        )


def _summary(camera_id: str, stats, every: int, faces: bool) -> str:
    ev = stats.events
    line = (
        f"camera {camera_id}: {stats.frames} frames processed (1 in {every}), "
        f"{stats.fps:.1f} processed frames/s = {stats.fps * every:.1f} input frames/s, "
        f"{stats.tracks} tracks, global ids {sorted({e['global_id'] for e in ev})}, "
        f"matched by {sorted({e['matched_by'] for e in ev})}"
    )
    if faces:
        line += (
            f", faces used/detected {sum(e['faces_seen'] for e in ev)}/{sum(e['faces_detected'] for e in ev)} on "
            f"{sum(e['faces_seen'] > 0 for e in ev)}/{sum(e['faces_detected'] > 0 for e in ev)} tracks"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    sources = [parse_camera(v, args.every, args.realtime) for v in args.video]
    from services.settings import body_embedder, body_settings

    embedder = body_embedder(
        body_settings(body_checkpoint=args.body_checkpoint, body_runtime=args.body_runtime), flip=args.flip
    )
    events = open(args.events, "a") if args.events else sys.stdout  # noqa: SIM115 (closed below)
    try:
        # the embedders' model cards carry their calibrated decisions: no flag needed
        with Gallery(args.db, embedders={"body": embedder}) as g:
            face_embedder = None
            if args.faces:  # plain or flip faces: the gallery's stored face templates have a say
                from reid.face import FaceDetector, build_face_embedder

                face_embedder = build_face_embedder(
                    args.face_model, args.face_flip, g.model_ids("face"), FaceDetector(args.face_detector)
                )
                g.add_embedder(face_embedder)
            _check_decisions(g, args, embedder.model_id, face_embedder)
            pipe = CameraPipeline(
                g,
                embedder,
                DETECTORS.build(args.detector),
                PipelineConfig(
                    tracker=args.tracker,
                    threshold=args.threshold,
                    face_threshold=args.face_threshold,
                    enroll=not args.no_enroll,
                    blur_faces=not args.no_blur,
                    reassociate=not args.no_reassociate,
                ),
                events=events,
                face_embedder=face_embedder,
                status=StatusWriter(args.status_dir) if args.status_dir else None,
            )
            for src in sources:
                out = Path(args.annotate) / f"{src.camera_id}.mp4" if args.annotate else None
                if out:
                    out.parent.mkdir(parents=True, exist_ok=True)
                stats = pipe.run(src, annotate=out)
                print(_summary(src.camera_id, stats, args.every, face_embedder is not None), file=sys.stderr)
    finally:
        if events is not sys.stdout:
            events.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

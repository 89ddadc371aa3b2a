"""A camera worker: detect, track and embed people, and publish track events to NATS JetStream.

The matcher (``python -m services.matcher``) turns the events into global ids and sightings. Run one worker
per camera or group of cameras; a worker restarted after a crash replays its video from the start and
republishes the same event ids, which JetStream and the matcher drop as duplicates.

Examples:
  python -m services.camera.worker --video ../shared/data/camera-feeds/lab/Single1.mp4:cam1 --every 3
  python -m services.camera.worker --video rtsp://10.0.0.5/stream1:door --nats nats://broker:4222
"""

from __future__ import annotations

import asyncio
import sys

from reid.cli.common import add_face_flip_option, make_parser, run, setup_logging
from reid.embedder import RUNTIMES
from services.broker import STREAM, SUBJECT_PREFIX, NatsPublisher
from services.camera.detectors import DETECTORS
from services.camera.pipeline import CameraPipeline, PipelineConfig
from services.camera.sources import parse_camera
from services.camera.tracker import TRACKERS


def body_embedder(checkpoint: str | None, runtime: str | None = None):
    """The body embedder of ``services.settings.body_embedder``: these options, else REID_BODY_*."""
    from services.settings import body_embedder, body_settings

    return body_embedder(body_settings(body_checkpoint=checkpoint, body_runtime=runtime))


def face_embedder(detector: str, flip: str = "auto", model: str = "dlib"):
    from reid.face import FaceDetector, build_face_embedder

    # no gallery here: "auto" is on; run the worker with --face-flip off for a gallery of plain face templates
    return build_face_embedder(model, flip, detector=FaceDetector(detector))


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m services.camera.worker", __doc__)
    p.add_argument("--video", action="append", required=True, help="URI:CAMERA_ID (file, rtsp:// or http://)")
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--stream", default=STREAM, help="JetStream stream name")
    p.add_argument("--subject-prefix", default=SUBJECT_PREFIX, help="subjects are <prefix>.<camera id>")
    p.add_argument(
        "--body-checkpoint", help="body model (default: REID_BODY_CHECKPOINT, else the shipped one)"
    )
    p.add_argument(
        "--body-runtime",
        choices=RUNTIMES,
        help="onnx (ONNX Runtime, REID_ONNX_THREADS threads) or torch (default: REID_BODY_RUNTIME, else onnx)",
    )
    p.add_argument("--detector", default="hog", choices=DETECTORS.names())
    p.add_argument("--tracker", default="bytetrack", choices=TRACKERS.names())
    p.add_argument("--every", type=int, default=3, help="process one frame in N")
    p.add_argument("--realtime", action="store_true", help="play files at their frame rate (a live camera)")
    p.add_argument("--segment-every", type=int, default=4, help="publish a track event every N embeddings")
    p.add_argument(
        "--faces", action="store_true", help="also send each track's face embedding (--face-model)"
    )
    p.add_argument("--face-detector", default="mtcnn", choices=["mtcnn", "hog", "cnn"])
    add_face_flip_option(
        p, "on (no gallery here: off for a matcher whose gallery holds plain face templates)"
    )
    args = p.parse_args(argv)
    setup_logging()
    sources = [parse_camera(v, args.every, args.realtime) for v in args.video]
    embedder = body_embedder(args.body_checkpoint, args.body_runtime)
    loop = asyncio.new_event_loop()
    pub = loop.run_until_complete(NatsPublisher(args.nats, args.stream, args.subject_prefix).connect())
    pipe = CameraPipeline(
        None,
        embedder,
        DETECTORS.build(args.detector),
        PipelineConfig(segment_every=args.segment_every, tracker=args.tracker),
        sink=lambda ev: loop.run_until_complete(pub.publish(ev)),
        face_embedder=face_embedder(args.face_detector, args.face_flip, args.face_model)
        if args.faces
        else None,
    )
    try:
        for src in sources:
            stats = pipe.run(src)
            print(
                f"camera {src.camera_id}: {stats.frames} frames processed (1 in {args.every}), "
                f"{stats.fps:.1f} processed frames/s, {stats.tracks} tracks published",
                file=sys.stderr,
            )
    finally:
        loop.run_until_complete(pub.close())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

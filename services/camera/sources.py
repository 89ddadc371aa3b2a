"""Frames from video files and RTSP/HTTP streams (OpenCV), one camera id each."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from reid.errors import ConfigError, ReidError


class SourceError(ReidError):
    """A video file or stream cannot be opened or read."""


@dataclass
class Frame:
    camera_id: str
    index: int
    timestamp: float  # seconds from the start of the video (stream: from the first frame)
    image: np.ndarray  # RGB


def parse_camera(item: str, every: int = 1, realtime: bool = False) -> VideoSource:
    """A ``URI:CAMERA_ID`` command-line value (file, rtsp:// or http://) as a source."""
    uri, sep, cam = item.rpartition(":")
    if not sep or not uri or not cam or "/" in cam:
        raise ConfigError(f"--video {item!r}: expected URI:CAMERA_ID")
    return VideoSource(uri, cam, every=every, realtime=realtime)


class VideoSource:
    """Iterate RGB frames; ``every`` keeps one frame in ``every`` (frame skipping for speed).

    ``realtime``: a file is played at its own frame rate (frames are not handed out before their time), so a
    recording stands in for a live camera; streams are live anyway.
    """

    def __init__(self, uri: str, camera_id: str, every: int = 1, realtime: bool = False) -> None:
        if every < 1:
            raise SourceError(f"{camera_id}: frame step must be >= 1, got {every}")
        self.uri, self.camera_id, self.every, self.realtime = uri, camera_id, every, realtime

    def __iter__(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(self.uri)
        if not cap.isOpened():
            raise SourceError(f"camera {self.camera_id}: cannot open {self.uri}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        start = time.monotonic()
        try:
            index = -1
            while True:
                ok = cap.grab()
                if not ok:
                    break
                index += 1
                if index % self.every:
                    continue
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                if self.realtime:
                    wait = start + index / fps - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                yield Frame(self.camera_id, index, index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()

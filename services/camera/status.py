"""What each camera is doing now, for the operator's page: the latest annotated frame (heads of people without
consent blurred) and a small JSON status (tracks in view with their global ids, frames/s), one pair of files per
camera in a status folder that the camera command writes and the API reads (``REID_CAMERA_STATUS_DIR``).

Writes are atomic (``reid.utils.io.atomic_write_bytes``), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from reid.utils.io import atomic_write_bytes

SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")  # camera ids that may name files


class StatusWriter:
    """Writes ``<camera>.jpg`` and ``<camera>.json`` at most every ``every_seconds``."""

    def __init__(self, folder: str | os.PathLike, every_seconds: float = 0.5) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.every = every_seconds
        self._last: dict[str, float] = {}

    def write(self, camera_id: str, bgr: np.ndarray, status: dict[str, Any], force: bool = False) -> bool:
        if not SAFE_ID.match(camera_id):
            return False  # such a camera id cannot name a file; its tile is not shown
        now = time.monotonic()
        if not force and now - self._last.get(camera_id, -1e9) < self.every:
            return False
        self._last[camera_id] = now
        ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            atomic_write_bytes(self.folder / f"{camera_id}.jpg", jpg.tobytes())
        atomic_write_bytes(
            self.folder / f"{camera_id}.json", json.dumps({**status, "updated_at": time.time()}).encode()
        )
        return True


def read_statuses(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every camera's last status, by camera id (unreadable files are skipped: a camera may be mid-write)."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


def frame_path(folder: str | os.PathLike, camera_id: str) -> Path | None:
    """The latest frame of ``camera_id``, or None (unknown camera, or an id that cannot name a file)."""
    if not SAFE_ID.match(camera_id):
        return None
    p = Path(folder) / f"{camera_id}.jpg"
    return p if p.is_file() else None

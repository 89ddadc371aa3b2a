"""A clear IoU tracker with constant-velocity prediction: detections are matched to tracks by the Hungarian
algorithm on IoU; unmatched detections start tracks; tracks unseen for ``max_age`` processed frames end."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from services.camera.detectors import box_iou


@dataclass
class Track:
    id: int
    box: np.ndarray  # xyxy
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    age: int = 0  # processed frames since last matched
    first_frame: int = 0
    last_frame: int = 0
    embeddings: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    global_id: int | None = None
    face_embeddings: list[np.ndarray] = field(default_factory=list)
    face_box: np.ndarray | None = None  # last face seen, frame coordinates
    faces_detected: int = 0  # faces found on this track, used or too small
    matched_by: str | None = None  # "face" or "body"
    segments: int = 0  # events published so far (worker mode)
    created_person: bool = False  # this track's first match created a new (anonymous) person
    template_ids: list[int] = field(default_factory=list)  # templates this track enrolled

    def predicted(self) -> np.ndarray:
        return self.box + self.velocity * (self.age + 1)


class IoUTracker:
    def __init__(self, min_iou: float = 0.2, max_age: int = 10) -> None:
        self.min_iou, self.max_age = min_iou, max_age
        self.tracks: list[Track] = []
        self._next = 1

    def update(self, boxes: np.ndarray, frame: int) -> tuple[list[tuple[Track, int]], list[Track]]:
        """Match detections; returns ([(track, detection index)], tracks that just ended)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        matched: list[tuple[Track, int]] = []
        used_t, used_d = set(), set()
        if self.tracks and len(boxes):
            iou = box_iou(np.stack([t.predicted() for t in self.tracks]), boxes)
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= self.min_iou:
                    t = self.tracks[r]
                    t.velocity = 0.5 * t.velocity + 0.5 * (boxes[c] - t.box) / (t.age + 1)
                    t.box, t.age, t.hits, t.last_frame = boxes[c], 0, t.hits + 1, frame
                    matched.append((t, int(c)))
                    used_t.add(r)
                    used_d.add(int(c))
        for r, t in enumerate(self.tracks):
            if r not in used_t:
                t.age += 1
        for c in range(len(boxes)):
            if c not in used_d:
                t = Track(self._next, boxes[c], first_frame=frame, last_frame=frame)
                self._next += 1
                self.tracks.append(t)
                matched.append((t, c))
        ended = [t for t in self.tracks if t.age > self.max_age]
        self.tracks = [t for t in self.tracks if t.age <= self.max_age]
        return matched, ended

    def flush(self) -> list[Track]:
        ended, self.tracks = self.tracks, []
        return ended

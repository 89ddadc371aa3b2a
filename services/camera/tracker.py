"""Trackers behind one interface, chosen by name (``TRACKERS``): ``update(detections, frame)`` takes (N, 5)
rows ``x1, y1, x2, y2, score`` (or (N, 4) boxes) and returns ([(track, detection index)], tracks that ended).

- ``bytetrack`` (default): ByteTrack from Roboflow's ``trackers`` package (Kalman filter on the box; confident
  detections are matched first, then the weak ones keep a partly hidden person's track alive instead of
  letting it end and a new one start).
- ``iou``: a clear IoU tracker with constant-velocity prediction (Hungarian matching on IoU; unmatched
  detections start tracks; tracks unseen for ``max_age`` processed frames end). No dependency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from reid.utils.registry import Registry
from services.camera.detectors import box_iou

TRACKERS: Registry[object] = Registry("tracker")


def _rows(detections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(detections, dtype=np.float64)
    d = d.reshape(-1, d.shape[-1] if d.size else 4)
    scores = d[:, 4] if d.shape[1] > 4 else np.ones(len(d))
    return d[:, :4], scores


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
    crop: np.ndarray | None = None  # the latest embedded crop (a created person's thumbnail)

    def predicted(self) -> np.ndarray:
        return self.box + self.velocity * (self.age + 1)


@TRACKERS.register("iou")
class IoUTracker:
    def __init__(self, min_iou: float = 0.2, max_age: int = 10) -> None:
        self.min_iou, self.max_age = min_iou, max_age
        self.tracks: list[Track] = []
        self._next = 1

    def update(self, detections: np.ndarray, frame: int) -> tuple[list[tuple[Track, int]], list[Track]]:
        """Match detections; returns ([(track, detection index)], tracks that just ended)."""
        boxes, _ = _rows(detections)
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


@TRACKERS.register("bytetrack")
class ByteTracker:
    """ByteTrack (``trackers.ByteTrackTracker``) with this module's ``Track`` objects and ids.

    Thresholds are on the detector's score: OpenCV's HOG people detector gives SVM margins (about 0.3-2.3;
    the detector drops < 0.3), so detections above ``high`` are matched first and start tracks, the rest only
    extend tracks that exist. ``max_age``: processed frames a lost track is kept (then it ends)."""

    def __init__(self, max_age: int = 10, high: float = 0.6, min_iou: float = 0.1) -> None:
        from trackers import ByteTrackTracker

        # fixed-rate mode counts one step per update; frame_rate 30 makes lost_track_buffer exactly max_age
        self._bt = ByteTrackTracker(
            lost_track_buffer=max_age,
            frame_rate=30.0,
            track_activation_threshold=high,
            minimum_consecutive_frames=1,
            minimum_iou_threshold=min_iou,
            high_conf_det_threshold=high,
        )
        self.max_age = max_age
        self.tracks: list[Track] = []
        self._of: dict[int, Track] = {}  # ByteTrack's id -> ours
        self._next = 1

    def update(self, detections: np.ndarray, frame: int) -> tuple[list[tuple[Track, int]], list[Track]]:
        import supervision as sv

        boxes, scores = _rows(detections)
        dets = sv.Detections(
            xyxy=boxes.astype(np.float32),
            confidence=scores.astype(np.float32),
            data={"index": np.arange(len(boxes))},
        )
        out = self._bt.update(dets) if len(boxes) else self._bt.update(sv.Detections.empty())
        matched: list[tuple[Track, int]] = []
        seen: set[int] = set()
        for tid, i in zip(out.tracker_id.tolist(), out.data.get("index", np.array([], int)).tolist()):
            if tid < 0:
                continue
            t = self._of.get(tid)
            box = boxes[int(i)]
            if t is None:
                t = self._of[tid] = Track(self._next, box, first_frame=frame, last_frame=frame)
                self._next += 1
                self.tracks.append(t)
            else:
                t.box, t.hits, t.last_frame = box, t.hits + 1, frame
            t.age = 0
            seen.add(t.id)
            matched.append((t, int(i)))
        for t in self.tracks:
            if t.id not in seen:
                t.age += 1
        ended = [t for t in self.tracks if t.age > self.max_age]
        if ended:
            gone = {t.id for t in ended}
            self.tracks = [t for t in self.tracks if t.id not in gone]
            self._of = {k: v for k, v in self._of.items() if v.id not in gone}
        return matched, ended

    def flush(self) -> list[Track]:
        ended, self.tracks, self._of = self.tracks, [], {}
        return ended

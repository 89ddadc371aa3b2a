"""Camera frames -> people -> tracks -> body embeddings -> one global person id across cameras (the gallery).

Per camera: detect people (pluggable detector), track them (IoU tracker), embed a crop of each tracked person
every ``embed_every`` processed frames; once a track has ``assign_after`` embeddings, their mean is matched
through ``Gallery.identify_or_enroll`` (a new anonymous person when nobody is close enough, if ``enroll`` is
allowed), which gives the track its global id. When the track ends, a sighting is written to the database and
an event line (JSON) is emitted. Faces are not used here yet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from gallery import Gallery
from reid.embedder import BaseEmbedder
from services.camera.sources import Frame, VideoSource
from services.camera.tracker import IoUTracker, Track

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    embed_every: int = 2
    assign_after: int = 4
    min_hits: int = 3
    threshold: float | None = None  # body threshold; default: the gallery's calibrated one
    enroll: bool = True
    min_box_height: int = 48


@dataclass
class CameraStats:
    camera_id: str
    frames: int = 0
    seconds: float = 0.0
    tracks: int = 0
    events: list[dict] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class CameraPipeline:
    def __init__(
        self,
        gallery: Gallery,
        embedder: BaseEmbedder,
        detector,
        config: PipelineConfig | None = None,
        events: IO[str] | None = None,
    ) -> None:
        self.gallery, self.embedder, self.detector = gallery, embedder, detector
        self.config = config or PipelineConfig()
        self.events = events

    def _crop(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if y2 - y1 < self.config.min_box_height or x2 - x1 < 8:
            return None
        return image[y1:y2, x1:x2]

    def _assign(self, track: Track, camera_id: str) -> None:
        v = np.mean(track.embeddings, axis=0)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        if self.config.enroll:
            r = self.gallery.identify_or_enroll(
                embedding=v, modality="body", model_id=self.embedder.model_id, threshold=self.config.threshold
            )
            track.global_id, score = r.person_id, r.score
        else:
            r = self.gallery.identify(
                embedding=v,
                modality="body",
                model_id=self.embedder.model_id,
                k=1,
                threshold=self.config.threshold,
            )
            track.global_id = r.best.person_id if r.known else None
            score = r.best.score if r.best else None
        track.scores.append(float(score) if score is not None else float("nan"))

    def _finish(self, track: Track, camera_id: str, fps_hint: float, stats: CameraStats) -> None:
        if track.hits < self.config.min_hits or not track.embeddings:
            return
        if track.global_id is None:
            self._assign(track, camera_id)
        if track.global_id is None:
            return
        score = track.scores[-1] if track.scores else None
        self.gallery.record_sighting(
            track.global_id, camera_id, score=score, modality="body", track_id=f"{camera_id}:{track.id}"
        )
        event = {
            "camera_id": camera_id,
            "track_id": track.id,
            "global_id": track.global_id,
            "first_frame": track.first_frame,
            "last_frame": track.last_frame,
            "hits": track.hits,
            "score": None if score is None or np.isnan(score) else round(score, 4),
            "box": [round(float(v), 1) for v in track.box],
        }
        stats.events.append(event)
        stats.tracks += 1
        if self.events is not None:
            self.events.write(json.dumps(event) + "\n")
            self.events.flush()

    def run(self, source: VideoSource, annotate: str | Path | None = None) -> CameraStats:
        stats = CameraStats(source.camera_id)
        tracker = IoUTracker()
        writer = None
        t0 = time.perf_counter()
        for frame in source:
            dets = self.detector.detect(frame.image)
            boxes = np.array([d[:4] for d in dets]).reshape(-1, 4)
            matched, ended = tracker.update(boxes, frame.index)
            self._embed_tracks(frame, matched, source.camera_id)
            for t in ended:
                self._finish(t, source.camera_id, 0.0, stats)
            if annotate:
                writer = self._draw(writer, annotate, frame, tracker.tracks)
            stats.frames += 1
        for t in tracker.flush():
            self._finish(t, source.camera_id, 0.0, stats)
        stats.seconds = time.perf_counter() - t0
        if writer is not None:
            writer.release()
        return stats

    def _embed_tracks(self, frame: Frame, matched: Iterable[tuple[Track, int]], camera_id: str) -> None:
        todo, crops = [], []
        for track, _ in matched:
            if (track.hits - 1) % self.config.embed_every:
                continue
            crop = self._crop(frame.image, track.box)
            if crop is not None:
                todo.append(track)
                crops.append(crop)
        if not crops:
            return
        for track, v in zip(todo, self.embedder.embed(crops)):
            track.embeddings.append(v)
            if track.global_id is None and len(track.embeddings) >= self.config.assign_after:
                self._assign(track, camera_id)

    @staticmethod
    def _draw(writer, path, frame: Frame, tracks: list[Track]):
        img = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        for t in tracks:
            if t.age:
                continue
            x1, y1, x2, y2 = (int(v) for v in t.box)
            label = f"id {t.global_id}" if t.global_id is not None else f"track {t.id}"
            cv2.rectangle(img, (x1, y1), (x2, y2), (0, 200, 0), 2)
            cv2.putText(img, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1)
        if writer is None:
            h, w = img.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
        writer.write(img)
        return writer

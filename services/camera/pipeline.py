"""Camera frames -> people -> tracks -> face and body embeddings -> one global person id across cameras.

Per camera: detect people (pluggable detector), track them (``PipelineConfig.tracker``, ByteTrack by default:
``services.camera.tracker``), embed a crop of each tracked person every ``embed_every`` processed frames, and,
with a face embedder, look for a face in the head part of the crop. Once a track has ``assign_after`` body
embeddings it gets its global id from ``services.identity.IdentityPolicy`` (shared with the NATS matcher): by
face when a face was seen and the gallery knows it (the body is then linked to that person), else by body
through ``Gallery.identify_or_enroll`` (a new anonymous person when nobody is close enough, if ``enroll`` is
allowed; a face seen on such a track is linked to it). When the track ends, a sighting is written and an event
line (JSON) is emitted.

Worker mode (``sink`` given, no gallery): the pipeline only tracks and embeds, and hands one
:class:`~services.broker.TrackEvent` per track segment to the sink (e.g. NATS); the matcher assigns ids.
Annotated videos blur the head of everyone not enrolled with consent unless ``blur_faces`` is off.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from gallery import Gallery, UnknownPersonError
from reid.embedder import BaseEmbedder
from reid.images import blur_boxes
from services.broker import TrackEvent
from services.camera.detectors import box_iou
from services.camera.sources import Frame, VideoSource
from services.camera.status import StatusWriter
from services.camera.tracker import TRACKERS, Track
from services.identity import Assignment, IdentityPolicy, TrackEvidence, mean_unit

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    tracker: str = "bytetrack"  # services.camera.tracker.TRACKERS
    embed_every: int = 2
    assign_after: int = 4
    min_hits: int = 3
    threshold: float | None = None  # body threshold; default: the gallery's calibrated one
    face_threshold: float | None = None  # default: the gallery's calibrated one
    enroll: bool = True
    min_box_height: int = 48
    segment_every: int = 0  # worker mode: an event every N body embeddings of a track (0: at its end only)
    blur_faces: bool = True  # annotated video: blur heads of people not enrolled with consent
    head_fraction: float = 0.3  # top part of a person box searched for a face / blurred
    # a ceiling camera's faces are 10-40 px: the head region is enlarged to this width before detection, and a
    # face is used only when its box is at least face_min_px wide in the frame (smaller ones carry no identity)
    face_upsample_to: int = 240
    face_min_px: int = 16
    # at the end of a track, its whole-track mean embedding is matched again: if the person this track created
    # early (from its first embeddings, often partial views) is in fact someone already known, they are merged
    reassociate: bool = True
    # at the end of a long track, its whole-track mean embedding becomes another template of its person (early
    # templates come from the first few, often partial, views)
    track_templates: bool = True
    review_band: float = 0.05  # near misses go to the review queue (0: off)


@dataclass
class CameraStats:
    camera_id: str
    frames: int = 0
    seconds: float = 0.0
    tracks: int = 0  # tracks that ended with a global id (or, in worker mode, an event)
    # tracks the tracker ended with at least ``min_hits`` detections and an embedding, named or not: a
    # fragment the identity policy gives no id is counted here only (what a comparison of trackers counts)
    tracked: int = 0
    events: list[dict] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class CameraPipeline:
    """One pipeline for any number of cameras (``run`` once per source).

    Args:
        gallery: the identity store (None in worker mode).
        embedder: the body embedder.
        detector: a people detector (``services.camera.detectors.DETECTORS``).
        face_embedder: e.g. ``reid.face.DlibFaceEmbedder``; faces are used only when given.
        sink: worker mode: receives a :class:`TrackEvent` per track segment instead of matching here.
    """

    def __init__(
        self,
        gallery: Gallery | None,
        embedder: BaseEmbedder,
        detector,
        config: PipelineConfig | None = None,
        events: IO[str] | None = None,
        face_embedder=None,
        sink: Callable[[TrackEvent], None] | None = None,
        status: StatusWriter | None = None,
    ) -> None:
        if gallery is None and sink is None:
            raise ValueError("CameraPipeline needs a gallery (matching here) or a sink (worker mode)")
        self.gallery, self.embedder, self.detector = gallery, embedder, detector
        self.config = config or PipelineConfig()
        self.events = events
        self.face_embedder = face_embedder
        self.sink = sink
        self.status = status  # the operator page's camera tile (latest annotated frame and status)
        self._consented: dict[int, bool] = {}
        self._live: dict[str, Track] = {}  # named live tracks by key: a later decision may rename them
        c = self.config
        self.policy = (
            None
            if gallery is None
            else IdentityPolicy(
                gallery,
                enroll=c.enroll,
                body_threshold=c.threshold,
                face_threshold=c.face_threshold,
                assign_after=c.assign_after,
                reassociate=c.reassociate,
                track_templates=c.track_templates,
                review_band=c.review_band,
            )
        )

    def _crop(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if y2 - y1 < self.config.min_box_height or x2 - x1 < 8:
            return None
        return image[y1:y2, x1:x2]

    def _evidence(self, track: Track, camera_id: str, ended: bool = False) -> TrackEvidence:
        return TrackEvidence(
            key=f"{camera_id}:{track.id}",
            camera_id=camera_id,
            body=mean_unit(track.embeddings),
            body_model_id=self.embedder.model_id,
            views=len(track.embeddings),
            first_frame=track.first_frame,
            last_frame=track.last_frame,
            face=mean_unit(track.face_embeddings) if track.face_embeddings else None,
            face_model_id=self.face_embedder.model_id if track.face_embeddings else None,
            ended=ended,
            box=np.asarray(track.box, dtype=np.float64).copy(),
        )

    def _assign(self, track: Track, camera_id: str, ended: bool = False) -> None:
        a = self.policy.assign(self._evidence(track, camera_id, ended))
        self._take(track, a)
        if a.person_id is not None and not ended:
            self._live[f"{camera_id}:{track.id}"] = track
        for key, other in self.policy.take_renamed().items():  # a track beside this one proved them apart
            if key in self._live:
                self._take(self._live[key], other)
                self._thumbnail(self._live[key], other)
                if other.person_id is None:  # nobody now: it is decided again as its views arrive
                    del self._live[key]
        self._thumbnail(track, a)

    def _thumbnail(self, track: Track, a: Assignment) -> None:
        if a.created and track.crop is not None:  # the new person's picture (operators' review, the page)
            h = track.crop.shape[0]
            head = (0, 0, track.crop.shape[1], h * self.config.head_fraction)
            self.gallery.set_thumbnail(a.person_id, blur_boxes(track.crop, [head]), replace=False)

    @staticmethod
    def _take(track: Track, a: Assignment) -> None:
        track.scores.append(float(a.score) if a.score is not None else float("nan"))
        track.global_id, track.matched_by = a.person_id, a.matched_by
        track.created_person, track.template_ids = a.created, list(a.template_ids)

    def _event(self, track: Track, camera_id: str, final: bool, live: Iterable[Track] = ()) -> TrackEvent:
        """One published segment of ``track``; ``live``: the camera's tracks, each sent with its latest box and
        that box's frame (a track the detector missed lately keeps its last box, up to the tracker's max age)."""
        seg = track.segments
        track.segments += 1
        ev = self._evidence(track, camera_id)
        return TrackEvent(
            event_id=f"{camera_id}:{track.id}:{seg}",
            camera_id=camera_id,
            track_id=track.id,
            segment=seg,
            first_frame=track.first_frame,
            last_frame=track.last_frame,
            hits=track.hits,
            box=[round(float(v), 1) for v in track.box],
            modality="body",
            model_id=ev.body_model_id,
            embedding=TrackEvent.encode_vector(ev.body),
            final=final,
            views=ev.views,
            face_embedding=None if ev.face is None else TrackEvent.encode_vector(ev.face),
            face_model_id=ev.face_model_id,
            beside=[
                {"track_id": t.id, "frame": t.last_frame, "box": [round(float(v), 1) for v in t.box]}
                for t in live
                if t is not track
            ],
        )

    def _finish(
        self,
        track: Track,
        camera_id: str,
        fps_hint: float,
        stats: CameraStats,
        live: Iterable[Track] = (),
    ) -> None:
        self._live.pop(f"{camera_id}:{track.id}", None)
        if track.hits < self.config.min_hits or not track.embeddings:
            return
        stats.tracked += 1
        if self.sink is not None:
            event = self._event(track, camera_id, final=True, live=live)
            self.sink(event)
            stats.events.append({"event_id": event.event_id, "camera_id": camera_id, "track_id": track.id})
            stats.tracks += 1
            return
        if track.global_id is None:
            self._assign(track, camera_id, ended=True)
        else:
            ev = self._evidence(track, camera_id, ended=True)
            a = Assignment(
                track.global_id, track.matched_by, None, track.created_person, list(track.template_ids)
            )
            done = self.policy.finish(ev, a)
            if done.person_id != track.global_id:
                track.scores.append(float(done.score))
            track.global_id, track.template_ids = done.person_id, done.template_ids
        if track.global_id is None:
            return
        score = track.scores[-1] if track.scores else None
        self.gallery.record_sighting(
            track.global_id,
            camera_id,
            score=score,
            modality=track.matched_by or "body",
            track_id=f"{camera_id}:{track.id}",
            event_id=f"{camera_id}:{track.id}:end",
        )
        event = {
            "camera_id": camera_id,
            "track_id": track.id,
            "global_id": track.global_id,
            "matched_by": track.matched_by,
            "faces_seen": len(track.face_embeddings),  # used: large enough to carry identity
            "faces_detected": track.faces_detected,
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
        tracker = TRACKERS.build(self.config.tracker)
        writer = img = None
        t0 = time.perf_counter()
        for frame in source:
            dets = np.array(self.detector.detect(frame.image), dtype=np.float64).reshape(-1, 5)
            matched, ended = tracker.update(dets, frame.index)
            if self.policy is not None:  # named tracks' boxes in this frame, for the two-people rule
                for t, _ in matched:
                    if t.global_id is not None:
                        self.policy.moved(
                            source.camera_id, f"{source.camera_id}:{t.id}", frame.index, t.box.copy()
                        )
            self._embed_tracks(frame, matched, source.camera_id, tracker.tracks)
            for t in ended:  # tracks ending together were beside each other too
                self._finish(t, source.camera_id, 0.0, stats, [*tracker.tracks, *ended])
            if ended and self.policy is not None:  # named tracks ended before every live track began
                oldest = min((t.first_frame for t in tracker.tracks), default=frame.index + 1)
                self.policy.forget_before(source.camera_id, oldest)
            stats.frames += 1
            if annotate or self.status is not None:
                img = self._annotated(frame, tracker.tracks, dets)
                if annotate:
                    writer = self._draw(writer, annotate, img)
                if self.status is not None:
                    self._tile(source.camera_id, img, tracker.tracks, stats, t0)
        rest = tracker.flush()
        for t in rest:
            self._finish(t, source.camera_id, 0.0, stats, rest)
        if self.policy is not None:  # every track of this run has ended: a later run starts afresh
            self.policy.forget_camera(source.camera_id)
        stats.seconds = time.perf_counter() - t0
        if self.status is not None and img is not None:  # the last frame stays, marked stopped
            self._tile(source.camera_id, img, [], stats, t0, force=True)
        if writer is not None:
            writer.release()
        return stats

    def _embed_tracks(
        self, frame: Frame, matched: Iterable[tuple[Track, int]], camera_id: str, live: Iterable[Track] = ()
    ) -> None:
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
        for track, crop, v in zip(todo, crops, self.embedder.embed(crops)):
            track.embeddings.append(v)
            track.crop = crop
            if self.face_embedder is not None:
                self._look_for_face(track, crop)
            if self.sink is not None:
                every = self.config.segment_every
                if every and len(track.embeddings) % every == 0:
                    self.sink(self._event(track, camera_id, False, live))
            elif track.global_id is None and len(track.embeddings) >= self.config.assign_after:
                self._assign(track, camera_id)
            elif track.global_id is not None:
                self.policy.seen(self._evidence(track, camera_id))

    def _look_for_face(self, track: Track, crop: np.ndarray) -> None:
        c = self.config
        head = crop[: max(8, int(crop.shape[0] * c.head_fraction))]
        scale = min(4.0, max(1.0, c.face_upsample_to / max(head.shape[1], 1)))
        if scale > 1.0:
            head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        found = self.face_embedder.detect_and_embed(head)
        if not found:
            return
        face, v = found[0]
        box = np.array(face.box, dtype=float) / scale
        track.faces_detected += 1
        x0, y0 = float(track.box[0]), float(track.box[1])
        track.face_box = box + np.array([x0, y0, x0, y0])
        if box[2] - box[0] >= c.face_min_px:
            track.face_embeddings.append(v)

    def _consent(self, pid: int | None) -> bool:
        """Enrolled by staff with a consent record (cached: consent is given at enrolment)."""
        if pid is None or self.gallery is None:
            return False
        if pid not in self._consented:
            try:
                p = self.gallery.get_person(pid)
                self._consented[pid] = p.kind == "enrolled" and bool(p.consent)
            except UnknownPersonError:  # erased meanwhile: treat as not consented
                return False
        return self._consented[pid]

    def _head_box(self, t: Track) -> np.ndarray:
        if t.face_box is not None:
            return t.face_box
        x1, y1, x2, y2 = t.box
        return np.array([x1, y1, x2, y1 + (y2 - y1) * self.config.head_fraction])

    def _annotated(
        self, frame: Frame, tracks: list[Track], detections: np.ndarray | None = None
    ) -> np.ndarray:
        """The frame in BGR with boxes and ids; heads of people not enrolled with consent blurred: every
        unconsented track's, and every detected person's that no consented track covers (a person the tracker
        has not confirmed yet, or has just lost, is blurred too)."""
        rgb = frame.image
        if self.config.blur_faces:
            hide = [self._head_box(t) for t in tracks if not t.age and not self._consent(t.global_id)]
            consented = [t.box for t in tracks if self._consent(t.global_id)]
            for d in [] if detections is None else detections[:, :4]:
                if not consented or box_iou(d[None], np.array(consented)).max() < 0.5:
                    x1, y1, x2, y2 = d
                    hide.append(np.array([x1, y1, x2, y1 + (y2 - y1) * self.config.head_fraction]))
            rgb = blur_boxes(rgb, hide)
        img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for t in tracks:
            if t.age:
                continue
            x1, y1, x2, y2 = (int(v) for v in t.box)
            label = f"id {t.global_id}" if t.global_id is not None else f"track {t.id}"
            cv2.rectangle(img, (x1, y1), (x2, y2), (0, 200, 0), 2)
            cv2.putText(img, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1)
        return img

    def _draw(self, writer, path, img: np.ndarray):
        if writer is None:
            h, w = img.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
        writer.write(img)
        return writer

    def _tile(
        self,
        camera_id: str,
        img: np.ndarray,
        tracks: list[Track],
        stats: CameraStats,
        t0: float,
        force: bool = False,
    ) -> None:
        seconds = time.perf_counter() - t0
        status = {
            "camera_id": camera_id,
            "frames": stats.frames,
            "fps": round(stats.frames / seconds, 1) if seconds > 0 else 0.0,
            "tracks": [
                {"track_id": t.id, "global_id": t.global_id, "box": [round(float(v), 1) for v in t.box]}
                for t in tracks
                if not t.age
            ],
            "running": not force,
        }
        self.status.write(camera_id, img, status, force=force)

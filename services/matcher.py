"""The matcher: consumes camera workers' track events from NATS JetStream and writes sightings.

Each event's mean body embedding goes through ``Gallery.identify_or_enroll`` (a track keeps the person its
first event got), then a sighting is stored under the event id and only then is the message acked: a matcher
killed at any point loses nothing (unacked messages are redelivered) and writes nothing twice (event ids are
unique in the database).

Examples:
  python -m services.matcher --db postgresql://user@db/gallery --threshold 0.8
  python -m services.matcher --db gallery.db --idle-exit 10     # stop once events pause for 10 s
"""

from __future__ import annotations

import asyncio
import logging
import sys

import numpy as np

from gallery import Gallery
from reid.cli.common import make_parser, run, setup_logging
from reid.decision_card import card_from_checkpoint_extra, flip_model_id, read_card
from reid.errors import ConfigError
from services.broker import STREAM, SUBJECT_PREFIX, TrackEvent, consume
from services.identity import Assignment, IdentityPolicy, TrackEvidence
from services.settings import body_checkpoint

logger = logging.getLogger(__name__)


class Matcher:
    """Names the tracks that camera workers publish, with the same :class:`IdentityPolicy` as the in-process
    camera pipeline (face first, body otherwise, fragments create nobody, re-association at a track's end)."""

    def __init__(
        self, gallery: Gallery, threshold: float | None = None, enroll: bool = True, assign_after: int = 4
    ) -> None:
        # assign_after: the workers' --segment-every, so the first event carries the views the pipeline decides on
        self.gallery = gallery
        self.policy = IdentityPolicy(
            gallery, enroll=enroll, body_threshold=threshold, assign_after=assign_after
        )
        self.assigned: dict[str, Assignment] = {}  # track key -> its decision (this process's)
        self.handled = 0
        self._face_cards: set[str] = set()
        self._newest: dict[str, int] = {}  # camera -> the latest frame its events reached

    def _face_card(self, model_id: str | None) -> None:
        """Workers with faces send their face model's embeddings: its shipped card decides unless one is
        calibrated."""
        if model_id and model_id not in self._face_cards:
            self._face_cards.add(model_id)
            card = read_card(model_id)
            if card is not None:
                self.gallery.register_card("face", model_id, card)
            stored = self.gallery.model_ids("face")
            if stored and model_id not in stored:
                plain = model_id.removesuffix("-flip")
                same_model = any(s.removesuffix("-flip") == plain for s in stored)
                fix = (f"--face-flip {'off' if model_id.endswith('-flip') else 'on'}" if same_model
                       else "--face-model set to the model of the stored templates")  # fmt: skip
                logger.warning(
                    "workers send %s face embeddings, but this gallery's face templates are %s: faces will match "
                    "nobody enrolled before (run the workers with %s)",
                    model_id, ", ".join(sorted(stored)), fix,
                )  # fmt: skip

    def _known_track(self, track_key: str) -> int | None:
        """After a restart: the person an earlier event of this track was given."""
        return self.gallery.track_person(track_key)

    # how far behind a camera's newest event a named track is still remembered (fragments and the two-people
    # rule look at tracks in view together; a frame number further back means the worker restarted)
    REMEMBER_FRAMES = 3000

    def _remember(self, ev: TrackEvent) -> None:
        newest = self._newest.get(ev.camera_id)
        if newest is not None and ev.last_frame + self.REMEMBER_FRAMES < newest:
            logger.info("camera %s: frame numbers start again (a restarted worker)", ev.camera_id)
            self.policy.forget_camera(ev.camera_id)
            newest = None
        newest = max(newest or 0, ev.last_frame)
        self._newest[ev.camera_id] = newest
        self.policy.forget_before(ev.camera_id, newest - self.REMEMBER_FRAMES)

    def _boxes_beside(self, ev: TrackEvent) -> None:
        """The boxes of the camera's other tracks when the event was made (workers send them), so the two-people
        rule compares tracks in view together even when their segments end at different frames."""
        if ev.beside is not None and not isinstance(ev.beside, list):
            logger.warning("event %s: 'beside' is not a list (%r); ignored", ev.event_id, ev.beside)
            return
        for b in ev.beside or ():
            try:
                key, frame = f"{ev.camera_id}:{int(b['track_id'])}", int(b["frame"])
                box = np.asarray(b["box"], dtype=np.float64).reshape(4)
            except (KeyError, TypeError, ValueError) as e:
                logger.warning("event %s: a malformed 'beside' entry %r is ignored (%s)", ev.event_id, b, e)
                continue
            self.policy.moved(ev.camera_id, key, frame, box)

    def handle(self, ev: TrackEvent) -> int | None:
        key = f"{ev.camera_id}:{ev.track_id}"
        self._face_card(ev.face_model_id)
        self._remember(ev)
        self._boxes_beside(ev)
        evidence = TrackEvidence(
            key=key,
            camera_id=ev.camera_id,
            body=ev.vector(),
            body_model_id=ev.model_id,
            views=ev.views or self.policy.assign_after,  # untold: not treated as a fragment
            first_frame=ev.first_frame,
            last_frame=ev.last_frame,
            face=ev.face_vector(),
            face_model_id=ev.face_model_id,
            ended=ev.final,
            box=np.asarray(ev.box, dtype=np.float64) if ev.box else None,
        )
        a, score, ours = self.assigned.get(key), None, False
        if a is None or a.person_id is None:
            # decided before a restart (and not renamed to nobody here since): what it created is not known,
            # so nothing is redone
            pid = self._known_track(key) if a is None else None
            if pid is not None:
                a = Assignment(pid, ev.modality)
            else:
                a = self.policy.assign(evidence)
                # a track beside this one, named the same person, proved to be someone else: its later
                # events carry the new decision (its earlier sightings keep the old one, as stored); renamed
                # to nobody (enrolling off), its next event is decided afresh
                for k, other in self.policy.take_renamed().items():
                    if k in self.assigned:
                        self.assigned[k] = other
                if a.person_id is None:
                    if key in self.assigned:
                        self.assigned[key] = a
                    return None
                score, ours = a.score, True
        else:
            self.policy.seen(evidence)
            ours = True
        if ev.final and ours:
            before = a.person_id
            a = self.policy.finish(evidence, a)
            if a.person_id != before:
                score = a.score
        self.assigned[key] = a
        self.gallery.record_sighting(
            a.person_id,
            ev.camera_id,
            score=score,
            modality=a.matched_by or ev.modality,
            track_id=key,
            event_id=ev.event_id,
        )
        self.handled += 1
        return a.person_id


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m services.matcher", __doc__)
    p.add_argument("--db", default="gallery.db")
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--stream", default=STREAM, help="JetStream stream name")
    p.add_argument("--subject-prefix", default=SUBJECT_PREFIX, help="subjects are <prefix>.<camera id>")
    p.add_argument("--durable", default="matcher", help="JetStream durable consumer name")
    p.add_argument("--threshold", type=float, default=None, help="body threshold (default: calibrated)")
    p.add_argument(
        "--body-checkpoint",
        nargs="*",
        default=None,
        help="checkpoints whose model cards give the default decision (default: the shipped body model)",
    )
    p.add_argument("--no-enroll", action="store_true", help="only recognise people already in the gallery")
    p.add_argument(
        "--assign-after",
        type=int,
        default=4,
        help="body views a track needs before it is not a fragment (the workers' --segment-every)",
    )
    p.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="stop after this many seconds without events (once events have flowed)",
    )
    args = p.parse_args(argv)
    setup_logging()
    with Gallery(args.db) as g:
        g.follow()
        for path in args.body_checkpoint or [
            body_checkpoint()
        ]:  # model cards: decisions when none calibrated
            from reid.models.checkpoint import read_checkpoint

            meta = read_checkpoint(path)[1]
            for flip in (False, True):  # workers may send plain or flip-averaged embeddings
                card = card_from_checkpoint_extra(meta.extra, flip=flip)
                g.register_card(meta.modality, flip_model_id(meta.model_id, flip), card)
        if args.threshold is None:
            logger.info("no --threshold: each model's calibrated decision (gallery, else model card)")
        m = Matcher(g, args.threshold, enroll=not args.no_enroll, assign_after=args.assign_after)
        try:
            n = asyncio.run(
                consume(
                    args.nats,
                    m.handle,
                    durable=args.durable,
                    idle_exit=args.idle_exit,
                    stream=args.stream,
                    prefix=args.subject_prefix,
                )
            )
        except OSError as e:
            raise ConfigError(f"--nats {args.nats}: cannot connect ({e})") from e
        print(f"matcher: {n} events handled", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

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

from sqlalchemy import select

from gallery import Gallery
from gallery.models import Sighting
from reid.cli.common import make_parser, run, setup_logging
from reid.decision_card import card_from_checkpoint_extra
from reid.errors import ConfigError
from services.broker import STREAM, SUBJECT_PREFIX, TrackEvent, consume
from services.settings import body_checkpoint

logger = logging.getLogger(__name__)


class Matcher:
    def __init__(self, gallery: Gallery, threshold: float | None = None, enroll: bool = True) -> None:
        self.gallery, self.threshold, self.enroll = gallery, threshold, enroll
        self.track_person: dict[str, int] = {}
        self.handled = 0

    def _known_track(self, track_key: str) -> int | None:
        pid = self.track_person.get(track_key)
        if pid is None:  # after a restart: the person an earlier event of this track was given
            with self.gallery.Session() as s:
                pid = s.scalar(select(Sighting.person_id).where(Sighting.track_id == track_key).limit(1))
        return pid

    def handle(self, ev: TrackEvent) -> int | None:
        g, key = self.gallery, f"{ev.camera_id}:{ev.track_id}"
        pid, score = self._known_track(key), None
        if pid is None:
            v = ev.vector()
            if self.enroll:
                r = g.identify_or_enroll(
                    embedding=v, modality=ev.modality, model_id=ev.model_id, threshold=self.threshold
                )
                pid, score = r.person_id, r.score
            else:
                r = g.identify(
                    embedding=v, modality=ev.modality, model_id=ev.model_id, k=1, threshold=self.threshold
                )
                if not r.known:
                    return None
                pid, score = r.best.person_id, r.best.score
        self.track_person[key] = pid
        g.record_sighting(
            pid, ev.camera_id, score=score, modality=ev.modality, track_id=key, event_id=ev.event_id
        )
        self.handled += 1
        return pid


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
            g.register_card(meta.modality, meta.model_id, card_from_checkpoint_extra(meta.extra))
        if args.threshold is None:
            logger.info("no --threshold: each model's calibrated decision (gallery, else model card)")
        m = Matcher(g, args.threshold, enroll=not args.no_enroll)
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

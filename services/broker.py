"""Track events between camera workers and the matcher over NATS JetStream (at-least-once, idempotent).

A camera worker publishes one :class:`TrackEvent` per track segment with a deterministic ``event_id``
(camera, track, segment) as the ``Nats-Msg-Id`` header: JetStream drops a republished duplicate inside its
duplicate window, and the matcher stores sightings under that id, so a redelivery (matcher killed before its
ack) or a replay (worker restarted from the start of its video) never writes a sighting twice. The matcher acks
a message only after the database commit, so a kill loses nothing: the message is delivered again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields

import numpy as np

logger = logging.getLogger(__name__)

STREAM = "REID_TRACKS"
SUBJECT_PREFIX = "reid.tracks"


@dataclass
class TrackEvent:
    event_id: str  # "<camera>:<track>:<segment>", the same on every replay of the same video
    camera_id: str
    track_id: int
    segment: int
    first_frame: int
    last_frame: int
    hits: int
    box: list[float]
    modality: str
    model_id: str
    embedding: str  # base64 of float32 little-endian, unit norm
    final: bool = False  # the track ended with this segment
    views: int = 0  # body embeddings in the mean (0: not told, by workers older than this field)
    face_embedding: str | None = None  # mean of the track's usable faces, when a face embedder ran
    face_model_id: str | None = None
    # the camera's other live tracks when the event was made, each with its latest box and that box's frame
    # ({"track_id", "frame", "box"}), so the matcher's two-people rule compares boxes seen at one time, not
    # only at segment ends
    beside: list[dict] | None = None

    def vector(self) -> np.ndarray:
        return np.frombuffer(base64.b64decode(self.embedding), dtype="<f4").astype(np.float32)

    def face_vector(self) -> np.ndarray | None:
        if not self.face_embedding:
            return None
        return np.frombuffer(base64.b64decode(self.face_embedding), dtype="<f4").astype(np.float32)

    @staticmethod
    def encode_vector(v: np.ndarray) -> str:
        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrackEvent:
        """An event; fields this version does not know (from newer workers) are left out, not fatal."""
        raw = json.loads(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


async def ensure_stream(
    js, stream: str = STREAM, prefix: str = SUBJECT_PREFIX, duplicate_window: float = 3600.0
) -> None:
    """Create the track stream if missing (file storage: events survive a broker restart)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"{prefix}.>"],
                storage=StorageType.FILE,
                duplicate_window=duplicate_window,
            )
        )


class NatsPublisher:
    """Publishes track events and waits for JetStream's ack (so a returned publish is stored)."""

    def __init__(
        self, url: str = "nats://127.0.0.1:4222", stream: str = STREAM, prefix: str = SUBJECT_PREFIX
    ) -> None:
        self.url, self.stream, self.prefix = url, stream, prefix
        self.nc = self.js = None
        self.duplicates = 0

    async def connect(self) -> NatsPublisher:
        import nats

        self.nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=5)
        self.js = self.nc.jetstream()
        await ensure_stream(self.js, self.stream, self.prefix)
        return self

    async def publish(self, event: TrackEvent) -> None:
        ack = await self.js.publish(
            f"{self.prefix}.{event.camera_id}",
            event.to_bytes(),
            headers={"Nats-Msg-Id": event.event_id},
            timeout=10,
        )
        if ack.duplicate:
            self.duplicates += 1

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.drain()


async def consume(
    url: str,
    handle: Callable[[TrackEvent], Awaitable[None] | None],
    durable: str = "matcher",
    ack_wait: float = 5.0,
    idle_exit: float | None = None,
    batch: int = 16,
    stream: str = STREAM,
    prefix: str = SUBJECT_PREFIX,
) -> int:
    """Pull events from the durable consumer and ack each after ``handle`` returns; returns how many were
    handled. ``idle_exit``: once messages have flowed, stop after that many seconds without one (batch jobs,
    tests); before the first message it waits indefinitely."""
    import nats
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url, connect_timeout=5)
    js = nc.jetstream()
    await ensure_stream(js, stream, prefix)
    sub = await js.pull_subscribe(
        f"{prefix}.>",
        durable=durable,
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=-1),
    )
    handled, idle_since = 0, None
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                msgs = []
            if not msgs:
                now = asyncio.get_running_loop().time()
                if idle_exit is not None and idle_since is not None and now - idle_since > idle_exit:
                    return handled
                continue
            idle_since = asyncio.get_running_loop().time()
            for m in msgs:
                try:
                    event = TrackEvent.from_bytes(m.data)
                except (json.JSONDecodeError, TypeError) as e:
                    logger.error("matcher: dropping a malformed message on %s (%s)", m.subject, e)
                    await m.term()  # never redeliver what can never be parsed
                    continue
                try:
                    r = handle(event)
                    if asyncio.iscoroutine(r):
                        await r
                except Exception:  # not acked: redelivered later, so a passing fault loses nothing
                    logger.exception("matcher: event %s failed; it will be redelivered", event.event_id)
                    await m.nak(delay=ack_wait)
                    continue
                await m.ack_sync()
                handled += 1
    finally:
        await nc.close()

"""Service settings from environment variables (``REID_*``), so a container or systemd unit configures it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from reid.errors import ConfigError

SCOPES = ("read", "enroll", "delete", "admin")


@dataclass
class ApiKey:
    key: str
    name: str
    scopes: frozenset[str]


# The body model this project trains and ships (see models/body/README.md); used when none is configured.
DEFAULT_BODY_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "body" / "mobilenetv2_cuhk03.pt"


@dataclass
class Settings:
    database_url: str = "gallery.db"
    index_dir: str | None = None
    api_keys: list[ApiKey] = field(default_factory=list)
    body_checkpoint: str | None = str(DEFAULT_BODY_CHECKPOINT) if DEFAULT_BODY_CHECKPOINT.is_file() else None
    # Raw-score thresholds that override the model cards' calibrated decisions (None: the card's decision, or a
    # calibration stored in the gallery, applies; a fixed raw cosine threshold accepts more strangers as the
    # gallery grows, which the cards' margin rule does not)
    face_threshold: float | None = None
    body_threshold: float | None = None
    max_upload_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    min_image_side: int = 16
    # scale-out and privacy
    store_id: str | None = None  # the store this process serves (retention is per store)
    follow_changes: bool = True  # follow the gallery change feed (needed when several processes share the DB)
    change_poll_interval: float = 0.5
    retention_days: float = 30.0  # anonymous (camera-created) identities expire this long after last seen
    retention_per_store: dict[str, float] = field(default_factory=dict)
    retention_sweep_every: float | None = 3600.0  # seconds between sweeps; None: only on request
    # thumbnails of people not enrolled with consent are stored with the face blurred (REID_BLUR_UNCONSENTED=0
    # turns this off, e.g. where every person is enrolled with consent anyway)
    blur_unconsented: bool = True
    # JSON-lines event files of the camera pipeline: an erasure also removes the person's lines from them
    event_logs: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> Settings:
        """``REID_DATABASE_URL``, ``REID_INDEX_DIR``, ``REID_API_KEYS`` (a JSON list of {key, name, scopes} or a
        path to such a file), ``REID_BODY_CHECKPOINT``, ``REID_FACE_THRESHOLD``, ``REID_BODY_THRESHOLD``, ``REID_MAX_UPLOAD_BYTES``, ``REID_STORE_ID``,
        ``REID_RETENTION_DAYS``, ``REID_RETENTION_PER_STORE``."""
        s = cls()
        s.database_url = os.environ.get("REID_DATABASE_URL", s.database_url)
        s.index_dir = os.environ.get("REID_INDEX_DIR") or None
        s.body_checkpoint = os.environ.get("REID_BODY_CHECKPOINT") or s.body_checkpoint
        for name in ("face", "body"):
            var = f"REID_{name.upper()}_THRESHOLD"
            if os.environ.get(var):
                try:
                    setattr(s, f"{name}_threshold", float(os.environ[var]))
                except ValueError as e:
                    raise ConfigError(f"{var}: expected a number, got {os.environ[var]!r}") from e
        if "REID_MAX_UPLOAD_BYTES" in os.environ:
            s.max_upload_bytes = int(os.environ["REID_MAX_UPLOAD_BYTES"])
        s.store_id = os.environ.get("REID_STORE_ID") or None
        if "REID_BLUR_UNCONSENTED" in os.environ:
            s.blur_unconsented = os.environ["REID_BLUR_UNCONSENTED"].strip().lower() not in (
                "0",
                "false",
                "no",
            )
        if os.environ.get("REID_EVENT_LOGS"):  # os.pathsep-separated
            s.event_logs = os.environ["REID_EVENT_LOGS"].split(os.pathsep)
        if "REID_RETENTION_DAYS" in os.environ:
            s.retention_days = float(os.environ["REID_RETENTION_DAYS"])
        if "REID_RETENTION_PER_STORE" in os.environ:  # JSON: {"store-7": 7}
            try:
                s.retention_per_store = {
                    str(k): float(v) for k, v in json.loads(os.environ["REID_RETENTION_PER_STORE"]).items()
                }
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
                raise ConfigError(f"REID_RETENTION_PER_STORE: expected a JSON object of days ({e})") from e
        raw = os.environ.get("REID_API_KEYS", "")
        if raw:
            s.api_keys = parse_api_keys(Path(raw).read_text() if Path(raw).is_file() else raw)
        return s


def parse_api_keys(text: str) -> list[ApiKey]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"REID_API_KEYS: not valid JSON ({e})") from e
    keys = []
    for i, item in enumerate(items):
        scopes = frozenset(item.get("scopes", ["read"]))
        unknown = scopes - set(SCOPES)
        if unknown or not item.get("key"):
            raise ConfigError(
                f"REID_API_KEYS[{i}]: needs a 'key' and scopes among {SCOPES} (got {sorted(unknown)})"
            )
        keys.append(ApiKey(item["key"], item.get("name", f"key{i}"), scopes))
    return keys

"""Service settings from environment variables (``REID_*``), so a container or systemd unit configures it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from reid.errors import ConfigError

SCOPES = ("read", "enroll", "delete", "admin")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# integer limits settable as REID_<NAME> (e.g. REID_MAX_UPLOAD_BYTES)
LIMITS = (
    "max_upload_bytes",
    "max_image_pixels",
    "max_request_bytes",
    "max_images_per_request",
    "max_json_bytes",
    "max_json_depth",
)


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
    # a request body larger than this is refused from its Content-Length, or as soon as the bytes received pass
    # it, before anything is parsed (room for an enroll of several photos of max_upload_bytes each)
    max_request_bytes: int = 64 * 1024 * 1024
    max_images_per_request: int = 32
    # person metadata and consent records: JSON of at most this many bytes and this nesting depth
    max_json_bytes: int = 16 * 1024
    max_json_depth: int = 8
    # /ready answers every caller with its status; the index counts and model ids need a key unless this is set
    public_readiness_detail: bool = False
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
        path to such a file), ``REID_BODY_CHECKPOINT``, ``REID_FACE_THRESHOLD``, ``REID_BODY_THRESHOLD``, ``REID_<LIMIT>`` for each of ``LIMITS``, ``REID_STORE_ID``,
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
        for name in LIMITS:
            var = f"REID_{name.upper()}"
            if os.environ.get(var):
                try:
                    value = int(os.environ[var])
                except ValueError:
                    value = 0
                if value < 1:
                    raise ConfigError(f"{var}: expected a positive whole number, got {os.environ[var]!r}")
                setattr(s, name, value)
        if "REID_PUBLIC_READINESS_DETAIL" in os.environ:
            s.public_readiness_detail = os.environ["REID_PUBLIC_READINESS_DETAIL"].strip().lower() in TRUE
        s.store_id = os.environ.get("REID_STORE_ID") or None
        if "REID_BLUR_UNCONSENTED" in os.environ:
            s.blur_unconsented = os.environ["REID_BLUR_UNCONSENTED"].strip().lower() not in FALSE
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
        raw = os.environ.get("REID_API_KEYS", "").strip()
        if raw:
            s.api_keys = parse_api_keys(read_api_keys_value(raw))
        return s


def read_api_keys_value(raw: str) -> str:
    """``REID_API_KEYS`` holds the keys as inline JSON or names a file holding them. Errors never repeat the
    value: it is a secret."""
    if raw.startswith(("[", "{")):
        return raw
    try:
        return Path(raw).read_text()
    except (OSError, ValueError) as e:  # ENAMETOOLONG, missing file, no permission, NUL in the value...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(
            "REID_API_KEYS: neither inline JSON (a list starting with '[') nor a readable key file "
            f"({reason}; the value is not shown)"
        ) from None


def parse_api_keys(text: str, source: str = "REID_API_KEYS") -> list[ApiKey]:
    """A JSON list of ``{"key": ..., "name": ..., "scopes": [...]}``. Errors say where, never which key."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(items, list):
        raise ConfigError(f"{source}: expected a JSON list of keys, got a JSON {type(items).__name__}")
    keys, names = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}[{i}]: expected an object with 'key', 'name' and 'scopes'")
        key, name, scopes = item.get("key"), item.get("name", f"key{i}"), item.get("scopes", ["read"])
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source}[{i}]: 'key' must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}[{i}]: 'name' must be a non-empty string")
        if not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
            raise ConfigError(f"{source}[{i}]: 'scopes' must be a list among {SCOPES}")
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ConfigError(
                f"{source}[{i}]: scopes must be among {SCOPES} (got {sorted(unknown) or 'none'})"
            )
        if name in names:
            raise ConfigError(f"{source}[{i}]: the name {name!r} is used twice (the audit log records names)")
        names.add(name)
        keys.append(ApiKey(key, name, frozenset(scopes)))
    return keys

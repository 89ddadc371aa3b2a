"""Service settings from environment variables (``REID_*``, read by pydantic-settings), so a container or systemd
unit configures the service."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gallery.models import AuditEntry
from reid.errors import ConfigError

if TYPE_CHECKING:
    from reid.embedder import Embedder

SCOPES = ("read", "enroll", "delete", "admin")


@dataclass
class ApiKey:
    key: str
    name: str
    scopes: frozenset[str]


KEY_NAME_MAX: int = AuditEntry.__table__.c.key_id.type.length  # the audit log records a key's name

# The body model this project trains and ships (see models/body/README.md); used when none is configured.
DEFAULT_BODY_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "body" / "mobilenetv2_cuhk03.pt"


def body_checkpoint(configured: str | os.PathLike | None = None) -> str:
    """The one place the services pick a body model: the configured checkpoint, else the shipped one."""
    if configured:
        return str(configured)
    if DEFAULT_BODY_CHECKPOINT.is_file():
        return str(DEFAULT_BODY_CHECKPOINT)
    raise ConfigError(
        f"no body model: the shipped {DEFAULT_BODY_CHECKPOINT} is absent; pass --body-checkpoint or set "
        "REID_BODY_CHECKPOINT"
    )


def _shipped_body_checkpoint() -> str | None:
    return str(DEFAULT_BODY_CHECKPOINT) if DEFAULT_BODY_CHECKPOINT.is_file() else None


def _default_onnx_threads() -> int:
    from reid.onnx_embedder import default_threads

    return default_threads()


class _EnvSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REID_", extra="ignore", validate_assignment=True)

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Settings from ``REID_*`` (``overrides`` win). A bad value is a :class:`ConfigError` naming the
        variable (never echoing an API key)."""
        try:
            return cls(**overrides)
        except ConfigError:
            raise
        except ValidationError as e:
            problems = [
                f"REID_{str(err['loc'][0]).upper()}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors(include_input=False)
            ]
            raise ConfigError("; ".join(problems)) from None


class BodyModelSettings(_EnvSettings):
    """How the body model runs (``REID_BODY_CHECKPOINT``, ``REID_BODY_RUNTIME``, ``REID_ONNX_THREADS``,
    ``REID_ONNX_CACHE_DIR``): read by the API (part of :class:`Settings`) and by the camera command and worker,
    which need no other setting. :func:`body_embedder` builds the embedder from them."""

    body_checkpoint: str | None = Field(default_factory=_shipped_body_checkpoint)
    # "onnx": the checkpoint's ONNX export (cached) on ONNX Runtime, 2.4x PyTorch eager on the shipped model;
    # "torch": PyTorch eager. Same model_id, decision and (within float rounding) vectors either way.
    body_runtime: Literal["onnx", "torch"] = "onnx"
    # ONNX Runtime intra-op threads (inter-op: 1); default min(2, cores)
    onnx_threads: PositiveInt = Field(default_factory=_default_onnx_threads)
    # where ONNX exports are cached (None: $XDG_CACHE_HOME/reid/onnx, i.e. ~/.cache/reid/onnx)
    onnx_cache_dir: str | None = None

    @field_validator("body_checkpoint", "onnx_cache_dir", mode="before")
    @classmethod
    def _empty_is_none_body(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v


def body_embedder(settings: BodyModelSettings, flip: bool = False) -> Embedder:
    """The one place the services build the body embedder: :func:`body_checkpoint` of the configured one on
    ``settings.body_runtime`` (ONNX Runtime with ``settings.onnx_threads`` threads, or PyTorch), on the CPU."""
    from reid.embedder import load_embedder

    return load_embedder(
        body_checkpoint(settings.body_checkpoint),
        settings.body_runtime,
        device="cpu",
        flip=flip,
        threads=settings.onnx_threads,
        cache_dir=settings.onnx_cache_dir,
    )


def body_settings(**cli: Any) -> BodyModelSettings:
    """:class:`BodyModelSettings` from the environment, with a command's options (those not None) winning."""
    return BodyModelSettings.from_env(**{k: v for k, v in cli.items() if v is not None})


class Settings(BodyModelSettings):
    """Every field is settable as ``REID_<FIELD>`` (e.g. ``REID_MAX_UPLOAD_BYTES=4000000``); lists and maps as
    described per field. ``Settings.from_env()`` turns a bad value into a :class:`ConfigError` naming it."""

    database_url: str = "gallery.db"
    index_dir: str | None = None
    # per-person files: the crops templates were made from (the person page shows them); default beside an
    # SQLite file, none on PostgreSQL unless set (replicas share one folder, or each keeps only its own crops)
    media_dir: str | None = None
    # inline JSON list of {key, name, scopes}, or the path of a file holding it
    api_keys: Annotated[list[ApiKey], NoDecode] = Field(default_factory=list)
    # Raw-score thresholds that override the model cards' calibrated decisions (None: the card's decision, or a
    # calibration stored in the gallery, applies; a fixed raw cosine threshold accepts more strangers as the
    # gallery grows, which the cards' margin rule does not)
    face_threshold: float | None = None
    body_threshold: float | None = None
    # faces: average each chip's descriptor with its mirror's ("on"); "auto" is on unless the gallery already
    # holds plain face templates and no flip ones (reid.face.face_flip)
    face_flip: Literal["auto", "on", "off"] = "auto"
    # which face embedder (reid.face.FACE_EMBEDDERS): dlib's (public weights) or InsightFace's w600k_mbf (names
    # many more people, but its weights are for non-commercial research only: docs/DEPLOYMENT.md)
    face_model: Literal["dlib", "insightface-w600k-mbf"] = "dlib"
    # a card's threshold re-read on the gallery's own persons (each asked against the others) once there are
    # enough of them (from 230 persons at the cards' 1 %); false: the card's threshold as shipped
    self_calibration: bool = True
    max_upload_bytes: PositiveInt = 8 * 1024 * 1024
    max_image_pixels: PositiveInt = 25_000_000
    min_image_side: PositiveInt = 16
    # a request body larger than this is refused from its Content-Length, or as soon as the bytes received pass
    # it, before anything is parsed (room for an enroll of several photos of max_upload_bytes each)
    max_request_bytes: PositiveInt = 64 * 1024 * 1024
    max_images_per_request: PositiveInt = 32
    # person metadata and consent records: JSON of at most this many bytes and this nesting depth
    max_json_bytes: PositiveInt = 16 * 1024
    max_json_depth: PositiveInt = 8
    # model-bound requests worked on at once; one more is answered 503 with Retry-After (load shedding)
    max_inflight: PositiveInt = 32
    # micro-batching (services.batching): concurrent body requests' forward passes run as one model call of at
    # most this many images (1 turns it off); a batch is held open at most embed_batch_wait_ms for more
    embed_batch_max: PositiveInt = 32
    embed_batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    # identify-or-enroll that creates a person although the best candidate fell short of the accept threshold by
    # at most this much (in the decision's normalised units) offers the pair for review; 0 turns it off
    review_band: float = Field(0.05, ge=0)
    # the camera commands' status folder (their --status-dir): the page's camera tiles read it
    camera_status_dir: str | None = None
    # /ready answers every caller with its status; the index counts and model ids need a key unless this is set
    public_readiness_detail: bool = False
    # scale-out and privacy
    store_id: str | None = None  # the store this process serves (retention is per store)
    follow_changes: bool = True  # follow the gallery change feed (needed when several processes share the DB)
    change_poll_interval: PositiveFloat = 0.5
    retention_days: PositiveFloat = (
        30.0  # anonymous (camera-created) identities expire this long after last seen
    )
    # JSON object of days per store, e.g. {"store-7": 7}
    retention_per_store: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    retention_sweep_every: PositiveFloat | None = 3600.0  # seconds between sweeps; None: only on request
    # thumbnails of people not enrolled with consent are stored with the face blurred (REID_BLUR_UNCONSENTED=0
    # turns this off, e.g. where every person is enrolled with consent anyway)
    blur_unconsented: bool = True
    # JSON-lines event files of the camera pipeline (os.pathsep-separated): an erasure also removes the person's
    # lines from them
    event_logs: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("index_dir", "media_dir", "store_id", "camera_status_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return parse_api_keys(read_api_keys_value(v.strip())) if v.strip() else []
        return v

    @field_validator("retention_per_store", mode="before")
    @classmethod
    def _per_store(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"expected a JSON object of days per store ({e.msg})") from None
            if not isinstance(v, dict):
                raise ValueError(f"expected a JSON object of days per store, got a JSON {type(v).__name__}")
        return v

    @field_validator("event_logs", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        return [x for x in v.split(os.pathsep) if x] if isinstance(v, str) else v


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
        if len(name) > KEY_NAME_MAX:  # the audit log's key_id column: a longer name could never be recorded
            raise ConfigError(f"{source}[{i}]: 'name' is {len(name)} characters; at most {KEY_NAME_MAX}")
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

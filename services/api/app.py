"""REST API over the gallery (FastAPI): persons, enroll, identify, identify-or-enroll, verify, sightings,
health/readiness and Prometheus metrics. Every request but health needs an ``X-API-Key`` with the right scope.

User mistakes are 4xx with a message that names the field or id: 400 bad request, 401 no/unknown key,
403 key lacks the scope, 404 unknown person, 409 conflict, 413 upload too large, 415 image format, 422 image
unreadable / no face / several faces. 5xx only for server faults.
"""

import hashlib
import hmac
import io
import json
import logging
import threading
import time
import zipfile
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gallery import DuplicatePersonError, Gallery, GalleryError, IndexMismatchError, UnknownPersonError
from gallery.audit import AuditLog
from gallery.privacy import RetentionPolicy, export_person, sweep_expired
from reid.embedder import BaseEmbedder
from reid.errors import ImageReadError, ReidError
from reid.images import blur_boxes
from services.api.limits import BodySizeLimit, check_json_field
from services.erasure import scrub_event_logs
from services.settings import ApiKey, Settings

logger = logging.getLogger(__name__)

# MPO: what many phone cameras write (a JPEG with extra frames); the first frame is the photo
ALLOWED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP"}
Modality = Literal["face", "body"]
PersonId = Annotated[int, FastPath(ge=1, le=2**63 - 1, description="person id")]
# past this, SQLite's 64-bit OFFSET arithmetic overflows; no gallery holds 2**53 persons
MAX_OFFSET = 2**53
# a strict policy for the web page: its own scripts and styles only, thumbnails as blob: URLs, no framing
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# ------------------------------------------------------------------------------------------------ schemas
class PersonIn(BaseModel):
    display_name: str | None = Field(None, max_length=200)
    external_id: str | None = Field(None, max_length=200)
    consent: dict | None = Field(None, description="the consent record: who agreed, when, to what")
    purpose: str | None = Field(None, max_length=200, description="why this person is held")
    metadata: dict | None = None


class FromResult(BaseModel):
    """Response models read straight from the gallery's result dataclasses (same field names)."""

    model_config = ConfigDict(from_attributes=True)


class PersonOut(FromResult):
    id: int
    display_name: str | None
    external_id: str | None
    kind: str
    created_at: datetime
    templates: dict[str, int]
    sightings: int


class EnrollOut(BaseModel):
    person_id: int
    created_person: bool
    model_id: str
    template_ids: list[int]
    duplicates: list[int] = Field(description="positions of uploaded images already stored")


class MatchOut(FromResult):
    person_id: int
    score: float
    display_name: str | None
    external_id: str | None


class DecisionOut(BaseModel):
    rule: str = Field(
        description="'raw': best score >= threshold; 'margin': best - beta x runner-up >= threshold"
    )
    threshold: float
    beta: float | None
    cohort_size: int = Field(description="never-enrolled people the runner-up is also taken from")
    source: str = Field(description="'calibrated' (this gallery), 'setting', 'model card' or 'argument'")
    size_aware: bool = Field(
        False, description="the threshold is read for the number of persons enrolled (see `threshold`)"
    )


class Evidence(BaseModel):
    """What the known / unknown answer was decided on."""

    decision: DecisionOut | None = None
    score: float | None = Field(None, description="the best person's raw cosine similarity")
    runner_up: float | None = Field(None, description="the best competitor: second person, or the cohort")
    normalised_score: float | None = Field(None, description="the value compared with the threshold")


class IdentifyOut(Evidence):
    modality: Modality
    model_id: str
    known: bool | None
    threshold: float | None
    person: MatchOut | None = Field(None, description="the best match when known")
    matches: list[MatchOut]


class IdentifyOrEnrollOut(Evidence):
    person_id: int
    created: bool
    threshold: float | None = None


class VerifyOut(Evidence):
    same_person: bool | None
    score: float
    threshold: float | None
    model_id: str


class SightingOut(FromResult):
    id: int
    person_id: int
    camera_id: str
    seen_at: datetime
    score: float | None
    modality: str | None


class MergeIn(BaseModel):
    remove: int = Field(description="the person folded into this one and deleted")


def evidence(r) -> dict:
    """The decision's evidence of an ``IdentifyResult`` as response fields."""
    return {
        "decision": r.decision,
        "score": r.score,
        "runner_up": r.runner_up,
        "normalised_score": r.normalised_score,
    }


class ErrorOut(BaseModel):
    detail: str


class AuditOut(FromResult):
    id: int
    at: datetime
    key_id: str | None
    action: str
    subject: str | None
    outcome: str
    detail: dict | None


class SweepOut(FromResult):
    deleted: list[int]
    templates_removed: int
    checked_at: datetime


# (method, route path) -> audited action; every call of these is written to the audit log with its outcome
AUDITED = {
    ("POST", "/identify"): "identify",
    ("POST", "/identify-or-enroll"): "identify-or-enroll",
    ("POST", "/verify"): "verify",
    ("POST", "/persons"): "create-person",
    ("POST", "/persons/{person_id}/enroll"): "enroll",
    ("POST", "/persons/{person_id}/merge"): "merge",
    ("DELETE", "/persons/{person_id}"): "delete",
    ("GET", "/persons/{person_id}/export"): "export",
    ("POST", "/admin/retention/sweep"): "retention-sweep",
    ("GET", "/audit"): "read-audit",
}


# --------------------------------------------------------------------------------------------- the app
class KeyRing:
    """API keys held as SHA-256 digests; a lookup compares against every key in constant time, so neither the
    answer's timing nor a memory dump shows a key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [(self._digest(k.key), ApiKey("", k.name, k.scopes)) for k in keys]

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()

    def find(self, given: str) -> ApiKey | None:
        d, found = self._digest(given), None
        for digest, key in self._keys:
            if hmac.compare_digest(digest, d):  # no early exit: every key is compared
                found = key
        return found


class ServiceState:
    def __init__(self, settings: Settings, gallery: Gallery, embedders: dict[str, BaseEmbedder]) -> None:
        self.settings, self.gallery, self.embedders = settings, gallery, embedders
        self.keys = KeyRing(settings.api_keys)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "reid_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram("reid_request_seconds", "request latency", ["route"], registry=self.registry)


STATUS = [
    (UnknownPersonError, 404),
    (DuplicatePersonError, 409),
    (IndexMismatchError, 409),
    (ImageReadError, 422),
    (GalleryError, 400),
    (ReidError, 422),  # FaceNotFoundError, MultipleFacesError, ...
]


def create_app(settings: Settings, embedders: dict[str, BaseEmbedder] | None = None) -> FastAPI:
    """The API over a gallery opened from ``settings``. ``embedders`` default to dlib (faces) and
    ``settings.body_checkpoint`` (bodies) when given."""
    if embedders is None:
        embedders = {}
        from reid.face import DlibFaceEmbedder

        embedders["face"] = DlibFaceEmbedder()
        if settings.body_checkpoint:
            from reid.embedder import Embedder

            embedders["body"] = Embedder.from_checkpoint(settings.body_checkpoint, device="cpu")
    thresholds = {
        m: t for m, t in (("face", settings.face_threshold), ("body", settings.body_threshold)) if t
    }
    gallery = Gallery(
        settings.database_url,
        index_dir=settings.index_dir,
        embedders=embedders,
        thresholds=thresholds,
        store_id=settings.store_id,
    )
    state = ServiceState(settings, gallery, embedders)
    audit = AuditLog(gallery.Session)
    policy = RetentionPolicy(settings.retention_days, dict(settings.retention_per_store))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        stop = threading.Event()
        if settings.follow_changes:
            gallery.follow(settings.change_poll_interval)
        if settings.retention_sweep_every:

            def sweeper() -> None:
                while not stop.wait(settings.retention_sweep_every):
                    try:
                        sweep_expired(gallery, policy)
                    except Exception:
                        logger.exception("retention sweep failed; retrying at the next interval")

            threading.Thread(target=sweeper, name="retention-sweeper", daemon=True).start()
        yield
        stop.set()
        gallery.close()

    app = FastAPI(
        lifespan=lifespan,
        title="reid-gallery",
        version="0.1.0",
        description="Who is in front of the camera: enroll, identify, identify-or-enroll.",
        responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
    )
    app.state.svc = state

    @app.exception_handler(ReidError)
    async def reid_error(_: Request, exc: ReidError) -> JSONResponse:
        code = next(c for t, c in STATUS if isinstance(exc, t))
        return JSONResponse({"detail": str(exc)}, status_code=code)

    def request_limit(scope) -> int:
        ctype = dict(scope["headers"]).get(b"content-type", b"")
        if ctype.startswith(b"multipart/"):
            return settings.max_request_bytes
        return 2 * settings.max_json_bytes + 4096  # metadata and consent, each at most max_json_bytes

    # inside `observe` (added after it), so a refused body is still counted and audited
    app.add_middleware(BodySizeLimit, limit_for=request_limit)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with one readable line per problem; the offending input is never echoed (it may be image bytes
        or a secret), so this handler cannot fail on what a client sent."""
        errors = [
            {
                "loc": [str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/") and any(e["loc"][:1] == ["body"] for e in errors):
            route = getattr(request.scope.get("route"), "path", "")
            if route == "/persons":
                detail += (
                    '; POST /persons takes JSON such as {"display_name": "Ann"}: '
                    "send photos to POST /persons/{person_id}/enroll"
                )
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def server_fault(request: Request, exc: Exception) -> JSONResponse:
        # reached only for faults of ours (user mistakes are 4xx above); the traceback goes to the log
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t = time.perf_counter()
        try:
            response = await call_next(request)
            status = response.status_code
        except Exception:
            response, status = None, 500  # answered by server_fault; audited below all the same
            raise
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            state.requests.labels(path, str(status)).inc()
            state.latency.labels(path).observe(time.perf_counter() - t)
            action = AUDITED.get((request.method, path))
            if action is not None and status != 401:  # no key, no actor to record
                await audit_request(request, action, status)
        if request.url.path.startswith("/ui/") or request.url.path == "/":
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def audit_request(request: Request, action: str, status: int) -> None:
        pid = request.path_params.get("person_id")
        subject = getattr(request.state, "audit_subject", None) or (f"person:{pid}" if pid else None)
        try:  # a database write: off the event loop, like the route handlers
            await run_in_threadpool(
                audit.write,
                action,
                "ok" if status < 400 else f"error {status}",
                key_id=getattr(request.state, "key_name", None),
                subject=subject,
            )
        except Exception:  # the answer is already computed; losing an audit row is logged loudly
            logger.exception("audit log write failed for %s %s", action, subject)

    def require(scope: str) -> Callable[..., ApiKey]:
        def dep(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> ApiKey:
            if not x_api_key:
                raise HTTPException(401, "missing X-API-Key header")
            key = state.keys.find(x_api_key)
            if key is None:
                raise HTTPException(401, "unknown API key")
            request.state.key_name = key.name  # the audit log records the key's name, never the secret
            if scope not in key.scopes and "admin" not in key.scopes:
                raise HTTPException(403, f"API key {key.name!r} lacks the {scope!r} scope")
            return key

        return dep

    Read = Annotated[ApiKey, Depends(require("read"))]
    Enroll = Annotated[ApiKey, Depends(require("enroll"))]
    Delete = Annotated[ApiKey, Depends(require("delete"))]
    Admin = Annotated[ApiKey, Depends(require("admin"))]

    def read_upload(upload: UploadFile, field: str, hashes: list | None = None) -> np.ndarray:
        limit = state.settings.max_upload_bytes
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{field} ({upload.filename}): larger than {limit} bytes")
        if not data:
            raise HTTPException(422, f"{field} ({upload.filename}): empty file")
        if hashes is not None:
            hashes.append(hashlib.sha256(data).hexdigest())
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise HTTPException(
                415, f"{field} ({upload.filename}): not an image (JPEG, PNG, WebP or BMP)"
            ) from None
        except Image.DecompressionBombError:  # a few KB that would decode to gigapixels
            raise HTTPException(
                413,
                f"{field} ({upload.filename}): its header declares far more than "
                f"{state.settings.max_image_pixels} pixels",
            ) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise HTTPException(422, f"{field} ({upload.filename}): unreadable image header ({e})") from None
        if im.format not in ALLOWED_FORMATS:
            raise HTTPException(415, f"{field} ({upload.filename}): format {im.format} is not accepted")
        w, h = im.size
        if w * h > state.settings.max_image_pixels:
            raise HTTPException(
                413, f"{field} ({upload.filename}): {w}x{h} exceeds {state.settings.max_image_pixels} pixels"
            )
        if min(w, h) < state.settings.min_image_side:
            raise HTTPException(
                422,
                f"{field} ({upload.filename}): {w}x{h} is smaller than {state.settings.min_image_side} px",
            )
        try:
            im.load()
            return np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise HTTPException(422, f"{field} ({upload.filename}): corrupt image ({e})") from None

    def embed_one(modality: str, image: np.ndarray, field: str) -> tuple[np.ndarray, str]:
        vec, model_id, _ = embed_located(modality, image, field)
        return vec, model_id

    def embed_located(modality: str, image: np.ndarray, field: str) -> tuple[np.ndarray, str, tuple | None]:
        """(embedding, model_id, face box or None for bodies)."""
        embedder = state.embedders.get(modality)
        if embedder is None:
            raise HTTPException(400, f"modality {modality!r} is not enabled on this server")
        if modality == "face":
            face, vec = embedder.embed_single(image, where=field)
            return vec, embedder.model_id, face.box
        return embedder.embed([image])[0], embedder.model_id, None

    def save_thumbnail(person_id: int, image: np.ndarray, box: tuple | None) -> None:
        """First thumbnail of a person; the face (or a body's head) is blurred unless enrolled with consent."""
        if settings.blur_unconsented:
            p = gallery.get_person(person_id)
            if not (p.kind == "enrolled" and p.consent):
                h, w = image.shape[:2]
                image = blur_boxes(image, [box if box is not None else (0, 0, w, h * 0.3)])
        gallery.set_thumbnail(person_id, image, replace=False)

    person_out = PersonOut.model_validate
    match_out = MatchOut.model_validate

    # ------------------------------------------------------------------------------------------ routes
    web = Path(__file__).resolve().parents[1] / "web"
    app.mount("/ui", StaticFiles(directory=web), name="ui")

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/ui/index.html")

    @app.get(
        "/persons/{person_id}/thumbnail",
        tags=["persons"],
        response_class=Response,
        responses={404: {"model": ErrorOut}, 200: {"content": {"image/jpeg": {}}}},
    )
    def thumbnail(person_id: PersonId, _: Read) -> Response:
        data = gallery.get_thumbnail(person_id)
        if data is None:
            raise HTTPException(404, f"person {person_id} has no thumbnail")
        return Response(data, media_type="image/jpeg")

    @app.get("/health", tags=["ops"])
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    def ready(x_api_key: Annotated[str | None, Header()] = None) -> dict:
        """Readiness for a probe (no key needed); the index counts and model ids only for a valid key, unless
        the operator made them public (``REID_PUBLIC_READINESS_DETAIL``)."""
        counts = gallery.check_consistency()  # raises when database and index disagree: not ready
        if not (settings.public_readiness_detail or (x_api_key and state.keys.find(x_api_key))):
            return {"status": "ready"}
        return {"status": "ready", "indexes": counts, "modalities": sorted(state.embedders)}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics(_: Read) -> PlainTextResponse:
        return PlainTextResponse(
            generate_latest(state.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    @app.post("/persons", tags=["persons"], status_code=201)
    def create_person(body: PersonIn, request: Request, _: Enroll) -> PersonOut:
        for name in ("metadata", "consent"):
            check_json_field(getattr(body, name), name, settings.max_json_bytes, settings.max_json_depth)
        pid = gallery.create_person(
            body.display_name, body.external_id, "enrolled", body.consent, body.metadata, purpose=body.purpose
        )
        request.state.audit_subject = f"person:{pid}"
        return person_out(gallery.get_person(pid))

    @app.get("/persons", tags=["persons"])
    def list_persons(
        _: Read,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[PersonOut]:
        return [person_out(p) for p in gallery.list_persons(offset, limit)]

    @app.get("/persons/{person_id}", tags=["persons"], responses={404: {"model": ErrorOut}})
    def get_person(person_id: PersonId, _: Read) -> PersonOut:
        return person_out(gallery.get_person(person_id))

    @app.delete("/persons/{person_id}", tags=["persons"], responses={404: {"model": ErrorOut}})
    def delete_person(person_id: PersonId, _: Delete) -> dict:
        """Erase the person: templates, sightings, thumbnail, files, index entries on every replica, and
        their lines in the configured camera event logs."""
        removed = gallery.delete_person(person_id)
        lines = scrub_event_logs(settings.event_logs, person_id)
        return {"person_id": person_id, "templates_removed": removed, "event_lines_removed": lines}

    @app.post("/persons/{person_id}/merge", tags=["persons"], responses={404: {"model": ErrorOut}})
    def merge(person_id: PersonId, body: MergeIn, _: Delete) -> PersonOut:
        return person_out(gallery.merge(person_id, body.remove))

    @app.post("/persons/{person_id}/enroll", tags=["enroll"], responses={404: {"model": ErrorOut}})
    def enroll(
        person_id: PersonId,
        _: Enroll,
        images: Annotated[list[UploadFile], File()],
        modality: Annotated[Modality, Form()] = "face",
    ) -> EnrollOut:
        gallery.get_person(person_id)  # 404 before any embedding work
        if len(images) > settings.max_images_per_request:
            raise HTTPException(
                413, f"images: {len(images)} files; at most {settings.max_images_per_request} per request"
            )
        vecs, model_id, hashes, first = [], None, [], None
        for i, up in enumerate(images):
            img = read_upload(up, f"images[{i}]", hashes)
            v, model_id, box = embed_located(modality, img, f"images[{i}] ({up.filename})")
            vecs.append(v)
            first = (img, box) if first is None else first
        if not vecs:
            raise HTTPException(422, "images: at least one image is required")
        r = gallery.enroll(
            person_id,
            embeddings=np.stack(vecs),
            modality=modality,
            model_id=model_id,
            sources=[up.filename or "" for up in images],
            image_hashes=hashes,
        )
        if r.template_ids:
            save_thumbnail(person_id, *first)
        return EnrollOut(
            person_id=r.person_id,
            created_person=r.created_person,
            model_id=r.model_id,
            template_ids=r.template_ids,
            duplicates=[d.index for d in r.duplicates],
        )

    @app.post("/identify", tags=["identify"])
    def identify(
        _: Read,
        request: Request,
        image: Annotated[UploadFile, File()],
        modality: Annotated[Modality, Form()] = "face",
        k: Annotated[int, Form(ge=1, le=100)] = 5,
    ) -> IdentifyOut:
        vec, model_id = embed_one(modality, read_upload(image, "image"), f"image ({image.filename})")
        r = gallery.identify(embedding=vec, modality=modality, model_id=model_id, k=k)
        matches = [match_out(m) for m in r.matches]
        if r.known:
            request.state.audit_subject = f"person:{r.best.person_id}"
        return IdentifyOut(
            modality=modality,
            model_id=model_id,
            known=r.known,
            threshold=r.threshold,
            person=matches[0] if r.known else None,
            matches=matches,
            **evidence(r),
        )

    @app.post("/identify-or-enroll", tags=["identify"])
    def identify_or_enroll(
        _: Enroll,
        request: Request,
        image: Annotated[UploadFile, File()],
        modality: Annotated[Modality, Form()] = "face",
    ) -> IdentifyOrEnrollOut:
        img = read_upload(image, "image")
        vec, model_id, box = embed_located(modality, img, f"image ({image.filename})")
        r = gallery.identify_or_enroll(embedding=vec, modality=modality, model_id=model_id)
        if r.created:
            save_thumbnail(r.person_id, img, box)
        request.state.audit_subject = f"person:{r.person_id}"
        return IdentifyOrEnrollOut(
            person_id=r.person_id, created=r.created, threshold=r.identify.threshold, **evidence(r.identify)
        )

    @app.post("/verify", tags=["identify"])
    def verify(
        _: Read,
        image_a: Annotated[UploadFile, File()],
        image_b: Annotated[UploadFile, File()],
        modality: Annotated[Modality, Form()] = "face",
    ) -> VerifyOut:
        va, model_id = embed_one(modality, read_upload(image_a, "image_a"), f"image_a ({image_a.filename})")
        vb, _ = embed_one(modality, read_upload(image_b, "image_b"), f"image_b ({image_b.filename})")
        score = float(va @ vb)
        decision = gallery.decision_for(modality, model_id)
        # image_b as a gallery of one person: under the margin rule it is weighed against the cohort
        v = None if decision is None else decision.verdict(va, [score])
        return VerifyOut(
            same_person=None if v is None else v.known,
            score=score,
            threshold=None if decision is None else decision.threshold,
            model_id=model_id,
            decision=None if decision is None else decision.describe(),
            runner_up=None if v is None else v.runner_up,
            normalised_score=None if v is None else v.normalised,
        )

    @app.get("/sightings", tags=["sightings"])
    def sightings(
        _: Read,
        person_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        camera_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[SightingOut]:
        return [
            SightingOut.model_validate(s)
            for s in gallery.sightings(person_id, camera_id, since, until, limit)
        ]

    @app.get(
        "/persons/{person_id}/export",
        tags=["privacy"],
        response_class=Response,
        responses={404: {"model": ErrorOut}, 200: {"content": {"application/zip": {}}}},
    )
    def export(person_id: PersonId, _: Admin) -> Response:
        """Subject access: everything held about the person, as ``person.json`` plus the images, in a zip."""
        record, files = export_person(gallery, person_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("person.json", json.dumps(record, indent=2))
            for name, data in files.items():
                z.writestr(name, data)
        return Response(
            buf.getvalue(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="person-{person_id}.zip"'},
        )

    @app.post("/admin/retention/sweep", tags=["privacy"])
    def retention_sweep(_: Admin) -> SweepOut:
        """Erase anonymous identities past their store's retention now (also runs periodically)."""
        return SweepOut.model_validate(sweep_expired(gallery, policy))

    @app.get("/audit", tags=["privacy"])
    def read_audit(
        _: Admin,
        subject: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[AuditOut]:
        """The audit log, newest first (admin keys only)."""
        return [AuditOut.model_validate(a) for a in audit.read(subject, action, since, limit)]

    return app

"""REST API over the gallery (FastAPI): persons, enroll, identify, identify-or-enroll, verify, sightings,
health/readiness and Prometheus metrics. Every request but health needs an ``X-API-Key`` with the right scope.

This module assembles the app: the service state, the error handlers, the middleware (metrics, audit, body
size, security headers) and one router per resource (``services/api/routes/``).

User mistakes are 4xx with a message that names the field or id: 400 bad request, 401 no/unknown key,
403 key lacks the scope, 404 unknown person, 409 conflict, 413 upload too large, 415 image format, 422 image
unreadable / no face / several faces. 5xx only for server faults.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from gallery import DuplicatePersonError, Gallery, GalleryError, IndexMismatchError, UnknownPersonError
from gallery.db import UNAVAILABLE
from gallery.privacy import sweep_expired
from gallery.review import ReviewDecidedError, UnknownReviewError
from reid.embedder import BaseEmbedder
from reid.errors import ImageReadError, ReidError
from services.api.deps import audit_action
from services.api.limits import BodySizeLimit, LoadShedder
from services.api.routes import ROUTERS
from services.api.schemas import ErrorOut
from services.api.state import ServiceState
from services.batching import BatchingEmbedder
from services.settings import Settings

logger = logging.getLogger(__name__)

# a strict policy for the web page: its own scripts and styles only, thumbnails as blob: URLs, no framing
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATUS = [
    (UnknownPersonError, 404),
    (UnknownReviewError, 404),
    (ReviewDecidedError, 409),
    (DuplicatePersonError, 409),
    (IndexMismatchError, 409),
    (ImageReadError, 422),
    (GalleryError, 400),
    (ReidError, 422),  # FaceNotFoundError, MultipleFacesError, ...
]
DB_RETRY_AFTER = 5  # seconds: a restarting database or a failover
WEB = Path(__file__).resolve().parents[1] / "web"


def create_app(settings: Settings, embedders: dict[str, BaseEmbedder] | None = None) -> FastAPI:
    """The API over a gallery opened from ``settings``. ``embedders`` default to ``settings.face_model`` (faces) and
    ``settings.body_checkpoint`` (bodies, on ``settings.body_runtime``) when given."""
    choose_face = embedders is None
    if embedders is None:
        embedders = default_embedders(settings)
    thresholds = {
        m: t for m, t in (("face", settings.face_threshold), ("body", settings.body_threshold)) if t
    }
    gallery = Gallery(
        settings.database_url,
        index_dir=settings.index_dir,
        media_dir=settings.media_dir,
        embedders=embedders,
        thresholds=thresholds,
        store_id=settings.store_id,
        self_calibration=settings.self_calibration,
    )
    if choose_face:  # plain or flip faces: the gallery's stored templates have a say (reid.face.face_flip)
        from reid.face import build_face_embedder

        embedders["face"] = build_face_embedder(
            settings.face_model, settings.face_flip, gallery.model_ids("face")
        )
        gallery.add_embedder(embedders["face"])
    state = ServiceState(settings, gallery, embedders)
    for e in embedders.values():
        if isinstance(e, BatchingEmbedder) and e.on_batch is None:
            e.on_batch = state.batch_sizes.observe
    app = FastAPI(
        lifespan=lifespan,
        title="reid-gallery",
        version="0.1.0",
        description="Who is in front of the camera: enroll, identify, identify-or-enroll.",
        responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
    )
    app.state.svc = state
    add_error_handlers(app)
    add_middleware(app, state)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/ui", StaticFiles(directory=WEB), name="ui")
    return app


def default_embedders(settings: Settings) -> dict[str, BaseEmbedder]:
    """The body embedder of ``settings`` (the face embedder is chosen once the gallery is open)."""
    embedders: dict[str, BaseEmbedder] = {}
    if settings.body_checkpoint:
        from services.settings import body_embedder

        body = body_embedder(settings)
        if settings.embed_batch_max > 1:
            body = BatchingEmbedder(body, settings.embed_batch_max, settings.embed_batch_wait_ms)
        embedders["body"] = body
    return embedders


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServiceState = app.state.svc
    settings, gallery = state.settings, state.gallery
    stop = threading.Event()
    # the gallery's maps hold a few Python containers per template (300k objects at 100k templates): a full
    # collection walks them all (~130 ms there), stalling every request at random. What is loaded by now lives
    # as long as the process, so the collector is told to leave it alone.
    gc.collect()
    gc.freeze()
    if settings.follow_changes:
        gallery.follow(settings.change_poll_interval)
    if settings.retention_sweep_every:

        def sweeper() -> None:
            while not stop.wait(settings.retention_sweep_every):
                try:
                    sweep_expired(gallery, state.retention)
                except Exception:
                    logger.exception("retention sweep failed; retrying at the next interval")

        threading.Thread(target=sweeper, name="retention-sweeper", daemon=True).start()

    def audit_flusher() -> None:  # rows an outage held back reach the database without waiting for a request
        while not stop.wait(DB_RETRY_AFTER):
            try:
                state.audit.flush_held()
            except Exception:
                logger.exception("audit log: writing held rows failed; retrying")

    threading.Thread(target=audit_flusher, name="audit-flusher", daemon=True).start()
    yield
    stop.set()
    for e in state.embedders.values():
        if isinstance(e, BatchingEmbedder):
            e.close()
    state.audit_writer.close()
    try:  # a last try for rows an outage held back; what still cannot be written is logged
        if state.audit.flush_held():
            logger.error("audit log: %d held rows lost at shutdown (database unavailable)", state.audit.held)
    except Exception:
        logger.exception("audit log: %d held rows lost at shutdown", state.audit.held)
    gallery.close()
    gc.unfreeze()  # what was frozen may now be garbage (an app closed in a process that goes on)


def _cause(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(exc).__name__}" + (f" from {type(orig).__module__}.{type(orig).__name__}" if orig else "")


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ReidError)
    async def reid_error(_: Request, exc: ReidError) -> JSONResponse:
        code = next(c for t, c in STATUS if isinstance(exc, t))
        return JSONResponse({"detail": str(exc)}, status_code=code)

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
        route = getattr(request.scope.get("route"), "path", "")
        if request.headers.get("content-type", "").startswith("multipart/") and route == "/persons":
            detail += (
                '; POST /persons takes JSON such as {"display_name": "Ann"}: '
                "send photos to POST /persons/{person_id}/enroll"
            )
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """The database cannot be reached, or is busy (SQLite's lock, a full pool): not a fault of the request,
        and it passes, so 503 with Retry-After (a load balancer's readiness probe sees the same). Only the error's
        class is logged: its message can hold the statement's parameters (names, embeddings)."""
        logger.error("%s %s: database unavailable (%s)", request.method, request.url.path, _cause(exc))
        return JSONResponse(
            {"detail": "the database is unavailable or busy; try again shortly"},
            status_code=503,
            headers={"Retry-After": str(DB_RETRY_AFTER)},
        )

    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, database_unavailable)

    @app.exception_handler(Exception)
    async def server_fault(request: Request, exc: Exception) -> JSONResponse:
        # reached only for faults of ours (user mistakes are 4xx above); the traceback goes to the log
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)


def add_middleware(app: FastAPI, state: ServiceState) -> None:
    settings = state.settings

    def request_limit(scope: Scope) -> int:
        ctype = dict(scope["headers"]).get(b"content-type", b"")
        if ctype.startswith(b"multipart/"):
            return settings.max_request_bytes
        return 2 * settings.max_json_bytes + 4096  # metadata and consent, each at most max_json_bytes

    # inside `observe` (added after it), so a refused body is still counted (route "unmatched"); one refused from
    # its Content-Length is not audited: it is answered before routing, so no audited route or key is known
    app.add_middleware(BodySizeLimit, limit_for=request_limit)
    app.add_middleware(LoadShedder, max_inflight=settings.max_inflight)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t = time.perf_counter()
        try:
            response = await call_next(request)
            status = response.status_code
        except Exception:
            status = 500  # answered by server_fault; counted and audited here all the same
            raise
        finally:
            path = getattr(request.scope.get("route"), "path", "unmatched")
            state.requests.labels(path, str(status)).inc()
            state.latency.labels(path).observe(time.perf_counter() - t)
            action = audit_action(request)
            if action is not None and status != 401:  # no key, no actor to record
                await audit(state, request, action, status)
        if request.url.path.startswith("/ui/") or request.url.path == "/":
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


async def audit(state: ServiceState, request: Request, action: str, status: int) -> None:
    pid = request.path_params.get("person_id")
    subject = getattr(request.state, "audit_subject", None) or (f"person:{pid}" if pid else None)
    entry = {
        "action": action,
        "outcome": "ok" if status < 400 else f"error {status}",
        "key_id": getattr(request.state, "key_name", None),
        "subject": subject,
    }
    try:  # written (committed with the rows queued beside it) before the answer goes out
        await asyncio.wrap_future(state.audit_writer.submit(entry))
    except Exception:  # the answer is already computed; losing an audit row is logged loudly
        logger.exception("audit log write failed for %s %s", action, subject)

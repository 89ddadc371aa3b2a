"""Request limits that hold before any parsing: body size (from Content-Length, then a running byte count)
and the size and nesting depth of client JSON kept in the gallery."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestTooLarge(HTTPException):
    def __init__(self, limit: int, what: str) -> None:
        # closing the connection stops the client's upload; otherwise the server drains the rest to reuse it
        super().__init__(
            413, f"request body: {what} is over the limit of {limit} bytes", headers={"Connection": "close"}
        )


class BodySizeLimit:
    """Pure ASGI middleware: a body whose Content-Length passes the limit is refused at once (nothing is read);
    a body without one (chunked) or with a false one is refused as soon as the bytes received pass the limit.

    ``limit_for(scope)`` gives the limit of a request (multipart uploads may be larger than JSON bodies)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = -1
            if n < 0:
                await _answer(send, 400, "Content-Length: not a whole number of bytes")
                return
            if n > limit:
                await _answer(
                    send, 413, f"request body: Content-Length {n} is over the limit of {limit} bytes"
                )
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # raised inside the route's body parsing: FastAPI passes an HTTPException on as it is
                    raise RequestTooLarge(limit, f"more than {received} bytes received")
            return message

        await self.app(scope, counted, send)


async def _answer(
    send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] = (), close: bool = True
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    if close:  # the unread body is not drained: the connection is closed after this answer
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LoadShedder:
    """Pure ASGI middleware: at most ``max_inflight`` requests of the model-bound routes are worked on at once;
    one more is answered 503 with ``Retry-After`` at once, instead of queueing until it is answered a minute
    late (health, readiness, metrics, the page and the sightings stream are never shed). The count is kept on
    the event loop, so it needs no lock."""

    OPEN = ("/health", "/ready", "/metrics", "/ui/", "/sightings/stream")

    def __init__(self, app: ASGIApp, max_inflight: int, retry_after: int = 1) -> None:
        self.app, self.max_inflight, self.retry_after = app, max_inflight, retry_after
        self.inflight = 0
        self.shed = 0  # answered 503 since start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/" or path.startswith(self.OPEN):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            self.shed += 1
            await _answer(
                send,
                503,
                f"busy: {self.inflight} requests in progress (at most {self.max_inflight}); retry in "
                f"{self.retry_after} s",
                extra=[(b"retry-after", str(self.retry_after).encode())],
                close=False,
            )
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``{}`` and ``[]`` are 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            d += 1
            deepest = max(deepest, d)
            stack.extend((x, d) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_json_field(value: Any, field: str, max_bytes: int, max_depth: int) -> None:
    """422 naming the field when client JSON to be stored is too deep or too large."""
    if value is None:
        return
    depth = json_depth(value)
    if depth > max_depth:
        raise HTTPException(422, f"{field}: nested {depth} levels deep; at most {max_depth} are accepted")
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > max_bytes:
        raise HTTPException(422, f"{field}: {size} bytes of JSON; at most {max_bytes} are accepted")

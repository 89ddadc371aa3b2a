"""The routes' dependencies, as ``Annotated`` types: the service state, the gallery, the settings, and an API
key with a scope (``Read``, ``Enroll``, ``Delete``, ``Admin``). Tests and embedders of the app can replace any
of them with ``app.dependency_overrides``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, HTTPException, Request

from gallery import Gallery
from services.api.state import ServiceState
from services.settings import ApiKey, Settings

F = TypeVar("F", bound=Callable)


# The dependencies are `async def` because they never block: FastAPI runs a plain `def` dependency in the
# thread pool, and under load every such hop waits for a free thread like a route does.


async def get_state(request: Request) -> ServiceState:
    return request.app.state.svc


async def get_gallery(state: Annotated[ServiceState, Depends(get_state)]) -> Gallery:
    return state.gallery


async def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


State = Annotated[ServiceState, Depends(get_state)]
GalleryDep = Annotated[Gallery, Depends(get_gallery)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_scope(scope: str) -> Callable[..., ApiKey]:
    """A dependency: the request's ``X-API-Key`` must be known (401) and hold ``scope`` or admin (403)."""

    async def dep(
        request: Request, state: State, x_api_key: Annotated[str | None, Header()] = None
    ) -> ApiKey:
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


Read = Annotated[ApiKey, Depends(require_scope("read"))]
Enroll = Annotated[ApiKey, Depends(require_scope("enroll"))]
Delete = Annotated[ApiKey, Depends(require_scope("delete"))]
Admin = Annotated[ApiKey, Depends(require_scope("admin"))]


def audited(action: str) -> Callable[[F], F]:
    """Mark a route's endpoint: every call is written to the audit log as ``action`` with its outcome (by the
    app's middleware, also when the route fails)."""

    def mark(endpoint: F) -> F:
        endpoint.audit_action = action  # type: ignore[attr-defined]
        return endpoint

    return mark


def audit_action(request: Request) -> str | None:
    return getattr(getattr(request.scope.get("route"), "endpoint", None), "audit_action", None)

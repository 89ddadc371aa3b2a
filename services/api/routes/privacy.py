"""Privacy: subject-access export, retention sweep, the audit log (admin keys only)."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from gallery.privacy import export_person, sweep_expired
from services.api.deps import Admin, State, audited
from services.api.schemas import AuditOut, ErrorOut, PersonId, SweepOut

router = APIRouter(tags=["privacy"])


@router.get(
    "/persons/{person_id}/export",
    response_class=Response,
    responses={404: {"model": ErrorOut}, 200: {"content": {"application/zip": {}}}},
)
@audited("export")
def export(person_id: PersonId, _: Admin, state: State) -> Response:
    """Subject access: everything held about the person, as ``person.json`` plus the images, in a zip."""
    record, files = export_person(state.gallery, person_id)
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


@router.post("/admin/retention/sweep")
@audited("retention-sweep")
def retention_sweep(_: Admin, state: State) -> SweepOut:
    """Erase anonymous identities past their store's retention now (also runs periodically)."""
    return SweepOut.model_validate(sweep_expired(state.gallery, state.retention))


@router.get("/audit")
@audited("read-audit")
def read_audit(
    _: Admin,
    state: State,
    subject: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[AuditOut]:
    """The audit log, newest first (admin keys only)."""
    return [AuditOut.model_validate(a) for a in state.audit.read(subject, action, since, limit)]

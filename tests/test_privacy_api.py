"""Privacy through the REST API on a real server: blurred thumbnails without consent, erasure of everything
(database rows, index, files, camera event logs), on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import create_engine, text

from services.api import create_app
from services.settings import ApiKey, Settings
from tests.servers import ColourEmbedder, running

H = {"X-API-Key": "admin-key"}


def striped(colour: tuple[int, int, int]) -> np.ndarray:
    """A person-sized image with 2-px stripes everywhere: blurring any region visibly flattens it."""
    a = np.zeros((96, 48, 3), np.uint8)
    a[...] = colour
    a[::4] //= 3
    a[1::4] //= 3
    return a


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def stripe_energy(jpeg: bytes, top: bool) -> float:
    g = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=float)
    part = g[: int(g.shape[0] * 0.25)] if top else g[int(g.shape[0] * 0.5) :]
    return float(np.abs(np.diff(part, axis=0)).mean())


def test_thumbnails_blur_without_consent_and_erasure_leaves_nothing(db_url: str, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    settings = Settings(
        database_url=db_url,
        api_keys=[ApiKey("admin-key", "admin", frozenset({"admin"}))],
        body_threshold=0.99,
        event_logs=[str(events)],
        retention_sweep_every=None,
        media_dir=str(tmp_path / "media"),  # template crops, on PostgreSQL too
    )
    with running(create_app(settings, embedders={"body": ColourEmbedder()})) as url:
        # a stranger from a camera: anonymous, no consent -> the head of the thumbnail is blurred
        stranger = striped((200, 40, 40))
        r = httpx.post(
            f"{url}/identify-or-enroll",
            headers=H,
            data={"modality": "body"},
            files={"image": ("s.png", png(stranger))},
        ).json()
        pid = r["person_id"]
        thumb = httpx.get(f"{url}/persons/{pid}/thumbnail", headers=H).content
        assert stripe_energy(thumb, top=True) < 0.25 * stripe_energy(thumb, top=False)
        # so is the crop kept for the person page
        (t,) = httpx.get(f"{url}/persons/{pid}/templates", headers=H).json()
        crop = httpx.get(f"{url}/persons/{pid}/templates/{t['id']}/image", headers=H).content
        assert stripe_energy(crop, top=True) < 0.25 * stripe_energy(crop, top=False)
        # enrolled by staff with a consent record -> stored as taken
        staff = httpx.post(
            f"{url}/persons",
            headers=H,
            json={"display_name": "Eve", "consent": {"by": "Eve", "scope": "staff"}},
        ).json()["id"]
        httpx.post(
            f"{url}/persons/{staff}/enroll",
            headers=H,
            data={"modality": "body"},
            files=[("images", ("e.png", png(striped((40, 40, 200))), "image/png"))],
        )
        thumb = httpx.get(f"{url}/persons/{staff}/thumbnail", headers=H).content
        assert stripe_energy(thumb, top=True) > 0.6 * stripe_energy(thumb, top=False)
        (t,) = httpx.get(f"{url}/persons/{staff}/templates", headers=H).json()
        crop = httpx.get(f"{url}/persons/{staff}/templates/{t['id']}/image", headers=H).content
        assert stripe_energy(crop, top=True) > 0.6 * stripe_energy(crop, top=False)

        # erasure: camera event log lines, rows, index entries
        events.write_text(
            "".join(
                json.dumps({"camera_id": "c", "track_id": i, "global_id": g}) + "\n"
                for i, g in enumerate([pid, staff, pid])
            )
            + "not json\n"
        )
        httpx.post(
            f"{url}/identify-or-enroll",
            headers=H,
            data={"modality": "body"},  # a sighting-like hit
            files={"image": ("s2.png", png(stranger))},
        )
        d = httpx.delete(f"{url}/persons/{pid}", headers=H).json()
        assert d == {"person_id": pid, "templates_removed": 1, "event_lines_removed": 2}
        lines = events.read_text().splitlines()
        assert lines == [json.dumps({"camera_id": "c", "track_id": 1, "global_id": staff}), "not json"]
        assert httpx.get(f"{url}/persons/{pid}", headers=H).status_code == 404
        assert not (tmp_path / "media" / str(pid)).exists()  # the crops went with the person
        q = httpx.post(
            f"{url}/identify", headers=H, data={"modality": "body"}, files={"image": ("q.png", png(stranger))}
        ).json()
        assert q["known"] is False and all(m["person_id"] != pid for m in q["matches"])
    engine = create_engine(db_url if "://" in db_url else f"sqlite:///{db_url}")
    with engine.connect() as c:
        for table, col in [
            ("persons", "id"),
            ("templates", "person_id"),
            ("sightings", "person_id"),
            ("thumbnails", "person_id"),
        ]:
            assert c.execute(text(f"SELECT count(*) FROM {table} WHERE {col} = :p"), {"p": pid}).scalar() == 0
        # what remains is the record that the erasure happened, by whom (no face, no name)
        rows = c.execute(
            text("SELECT action, key_id FROM audit_log WHERE subject = :s ORDER BY id"),
            {"s": f"person:{pid}"},
        ).all()
        assert [tuple(r) for r in rows][-1] == ("delete", "admin")
    engine.dispose()

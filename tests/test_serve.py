"""`reid-serve` as a user starts it: the admin key is made once, 0600 from the start, shown once; the SQLite file
holding names and embeddings is private too."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO
from tests.servers import free_port


def start_and_stop(db: Path) -> str:
    """Start the server, wait until it answers, stop it; return what it wrote to stderr."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REID_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.serve", "--db", str(db), "--port", str(port)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_admin_key_is_created_private_and_shown_once(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    first = start_and_stop(db)
    keyfile = tmp_path / "g.keys.json"
    key = json.loads(keyfile.read_text())[0]["key"]
    assert f"created an admin API key in {keyfile}: {key}" in first
    assert mode(keyfile) == 0o600 and mode(db) == 0o600
    second = start_and_stop(db)
    assert key not in second and f"API keys: {keyfile} (1 keys)" in second
    assert json.loads(keyfile.read_text())[0]["key"] == key  # never overwritten


def test_the_sqlite_file_and_its_wal_are_private_from_creation(tmp_path: Path, caplog) -> None:
    """The gallery's own check, without starting a server: the file is made 0600 before SQLite opens it (SQLite
    gives its -wal and -shm files the database's mode), and a loose file made by someone else is warned about."""
    from sqlalchemy import text

    from gallery.db import make_engine

    db = tmp_path / "new" / "g.db"
    engine = make_engine(str(db))
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
            c.execute(text("INSERT INTO t VALUES (1)"))
        assert mode(db) == 0o600
        assert mode(db.with_name("g.db-wal")) == 0o600 and mode(db.with_name("g.db-shm")) == 0o600
    finally:
        engine.dispose()
    loose = tmp_path / "loose.db"
    loose.touch()
    loose.chmod(0o644)
    make_engine(str(loose)).dispose()
    assert mode(loose) == 0o644  # an existing file keeps its mode: the operator chose it
    assert "loose.db is readable by other users" in caplog.text


def test_concurrent_starts_make_one_whole_key_file_and_leave_nothing_else(tmp_path: Path) -> None:
    """Eight starts at once: one makes the file, the others read it; it is never seen empty or partial, and
    no temporary file is left beside it."""
    from concurrent.futures import ThreadPoolExecutor

    from services.serve import create_key_file

    path = tmp_path / "g.keys.json"
    seen: list[str] = []

    def start(_: int) -> bool:
        created = create_key_file(path)
        seen.append(path.read_text())
        return created

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(start, range(8)))
    assert created.count(True) == 1
    assert len(set(seen)) == 1 and json.loads(seen[0])[0]["scopes"] == ["admin"]
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.keys.json"]
    assert create_key_file(path) is False and path.read_text() == seen[0]  # never overwritten

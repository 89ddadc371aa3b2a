"""Database engine and schema: SQLite (embedded default) or PostgreSQL (production), migrated with Alembic."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from gallery.errors import GalleryError

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
# the database cannot be reached, or is busy (SQLite's lock, a full pool): not a fault of the request, and it passes
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


def normalize_url(url: str) -> str:
    """A path becomes an SQLite URL; ``postgresql://`` uses psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (it holds names and face embeddings; SQLite gives its
    -wal and -shm files the same mode). An existing file keeps its mode; a loose one is warned about."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            logger.warning(
                "%s is readable by other users (it holds names and embeddings): chmod 600 it", path
            )


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception as e:
        raise GalleryError(f"database URL {url!r} is not valid: {e}") from e
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            create_private_file(Path(db))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_setup(dbapi_conn, _record) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN (pysqlite's own transaction handling defers it),
            # so a write transaction can be taken up front with BEGIN IMMEDIATE.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:
            conn.exec_driver_sql(conn.info.pop("begin_statement", "BEGIN"))

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest Alembic revision; idempotent)."""
    from alembic import command

    cfg = alembic_config(engine)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # Rebuilding a table (Alembic batch mode) drops it: with foreign keys on, dropping persons would
            # cascade to every template. The pragma is ignored inside a transaction, so it is set on the driver
            # connection (autocommit) before BEGIN, and checked by the migrations that rebuild tables.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                if not sqlite:
                    # serialise concurrent migrations of several processes starting at once
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7343091)")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


class WriteSessions(sessionmaker):
    """``Session()`` reads; ``Session.begin()`` writes, and on SQLite takes the write lock at BEGIN
    (``BEGIN IMMEDIATE``). A deferred transaction that reads and then writes fails at its first write, at once
    and whatever the busy timeout, when another connection has committed since its read (WAL's
    ``SQLITE_BUSY_SNAPSHOT``): under concurrent requests a merge or a review decision then answered 503 after
    half of it was done. Taken up front, the lock is waited for instead. PostgreSQL is unchanged."""

    @contextmanager
    def begin(self) -> Iterator[Session]:  # type: ignore[override]
        engine = self.kw["bind"]
        if engine.dialect.name != "sqlite":
            with super().begin() as s:
                yield s
            return
        with engine.connect() as conn:
            conn.info["begin_statement"] = "BEGIN IMMEDIATE"
            with conn.begin(), Session(bind=conn, expire_on_commit=False) as s:
                yield s
                s.flush()


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return WriteSessions(bind=engine, expire_on_commit=False)

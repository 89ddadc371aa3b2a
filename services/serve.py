"""Start the REST API (uvicorn) over a gallery database.

Examples:
  reid-serve                                        # SQLite gallery.db, 127.0.0.1:8000, dlib faces
  reid-serve --db postgresql://user@host/db --port 9000 --body-checkpoint models/body.pt
  reid-serve --body-runtime torch                   # the body model on PyTorch (default: ONNX Runtime)
  curl -H "X-API-Key: $KEY" -F image=@face.jpg http://127.0.0.1:8000/identify
With no REID_API_KEYS configured, an admin key is created in <db>.keys.json and printed once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from pathlib import Path

from reid.cli.common import make_parser, run, setup_logging
from reid.embedder import RUNTIMES
from reid.errors import ConfigError
from services.settings import Settings, parse_api_keys

logger = logging.getLogger("reid-serve")


def main(argv: list[str] | None = None) -> int:
    p = make_parser("reid-serve", __doc__)
    p.add_argument("--db", default=os.environ.get("REID_DATABASE_URL", "gallery.db"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--body-checkpoint", default=os.environ.get("REID_BODY_CHECKPOINT"))
    p.add_argument(
        "--body-runtime",
        choices=RUNTIMES,
        help="onnx (ONNX Runtime, REID_ONNX_THREADS threads) or torch (default: REID_BODY_RUNTIME, else onnx)",
    )
    args = p.parse_args(argv)
    setup_logging()
    settings = Settings.from_env()
    settings.database_url = args.db
    if args.body_checkpoint:
        settings.body_checkpoint = args.body_checkpoint
    if args.body_runtime:
        settings.body_runtime = args.body_runtime
    if not settings.api_keys:
        # beside an SQLite file; for a server URL, in the working directory
        keyfile = Path(args.db if "://" not in args.db else "gallery").with_suffix(".keys.json")
        created = create_key_file(keyfile)
        try:
            settings.api_keys = parse_api_keys(keyfile.read_text(), source=str(keyfile))
        except OSError as e:
            raise ConfigError(f"{keyfile}: cannot read the API key file ({e.strerror})") from None
        if created:  # the secret is shown once, when it is made; later starts only say where it is
            print(f"created an admin API key in {keyfile}: {settings.api_keys[0].key}", file=sys.stderr)
        else:
            print(f"API keys: {keyfile} ({len(settings.api_keys)} keys)", file=sys.stderr)
            if keyfile.stat().st_mode & 0o077:
                logger.warning("%s is readable by other users: chmod 600 it", keyfile)
    import uvicorn

    from services.api import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def create_key_file(path: Path) -> bool:
    """Write a new admin key to ``path`` unless it exists: created 0600 (never readable by others, not even for
    a moment), never overwritten, and never seen empty or half-written: the key is written and synced to a
    private file beside it first, which is then linked in under ``path`` in one step (a crash in between leaves
    no key file, so the next start makes one). True if it was created."""
    data = json.dumps([{"key": secrets.token_urlsafe(24), "name": "admin", "scopes": ["admin"]}]).encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if path exists: another start made it first
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def cli() -> None:
    raise SystemExit(run(main))


if __name__ == "__main__":
    cli()

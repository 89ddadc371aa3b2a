"""Start the REST API (uvicorn) over a gallery database.

Examples:
  reid-serve                                        # SQLite gallery.db, 127.0.0.1:8000, dlib faces
  reid-serve --db postgresql://user@host/db --port 9000 --body-checkpoint models/body.pt
  curl -H "X-API-Key: $KEY" -F image=@face.jpg http://127.0.0.1:8000/identify
With no REID_API_KEYS configured, an admin key is created in <db>.keys.json and printed once.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from reid.cli.common import make_parser, run, setup_logging
from services.settings import Settings, parse_api_keys


def main(argv: list[str] | None = None) -> int:
    p = make_parser("reid-serve", __doc__)
    p.add_argument("--db", default=os.environ.get("REID_DATABASE_URL", "gallery.db"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--body-checkpoint", default=os.environ.get("REID_BODY_CHECKPOINT"))
    args = p.parse_args(argv)
    setup_logging()
    settings = Settings.from_env()
    settings.database_url = args.db
    if args.body_checkpoint:
        settings.body_checkpoint = args.body_checkpoint
    if not settings.api_keys:
        # beside an SQLite file; for a server URL, in the working directory
        keyfile = Path(args.db if "://" not in args.db else "gallery").with_suffix(".keys.json")
        if not keyfile.exists():
            keyfile.write_text(
                json.dumps([{"key": secrets.token_urlsafe(24), "name": "admin", "scopes": ["admin"]}])
            )
            keyfile.chmod(0o600)
            print(f"created an admin API key in {keyfile}", file=sys.stderr)
        settings.api_keys = parse_api_keys(keyfile.read_text())
        print(f"API key (admin): {settings.api_keys[0].key}", file=sys.stderr)
    import uvicorn

    from services.api import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cli() -> None:
    raise SystemExit(run(main))


if __name__ == "__main__":
    cli()

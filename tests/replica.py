"""One gallery API replica for the multi-process tests: ``python -m tests.replica --db URL --port N``.

The real app and uvicorn, with the small colour-histogram body embedder (no model weights needed).
"""

from __future__ import annotations

import argparse

import uvicorn

from services.api import create_app
from services.settings import ApiKey, Settings
from tests.servers import ColourEmbedder

KEYS = [ApiKey("admin-key", "admin", frozenset({"admin"}))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--poll", type=float, default=0.5)
    p.add_argument("--no-follow", action="store_true", help="do not follow the change feed in the background")
    a = p.parse_args()
    settings = Settings(
        database_url=a.db,
        api_keys=KEYS,
        body_threshold=0.99,
        change_poll_interval=a.poll,
        retention_sweep_every=None,
        follow_changes=not a.no_follow,
    )
    app = create_app(settings, embedders={"body": ColourEmbedder()})
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", workers=1)


if __name__ == "__main__":
    main()

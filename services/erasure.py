"""Erasure beyond the gallery: the camera pipeline's JSON-lines event logs.

``Gallery.delete_person`` removes rows, index entries (on every replica, through the change feed) and the
person's media folder; event logs are files the services write, so the services scrub them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


def scrub_event_logs(paths: Iterable[str | os.PathLike], person_id: int) -> int:
    """Rewrite each JSON-lines file without the events of ``person_id`` (atomically); returns lines removed.

    Lines that are not JSON are kept (never silently dropped) and reported in the log.
    """
    removed = 0
    for path in map(Path, paths):
        if not path.is_file():
            continue
        keep, dropped = [], 0
        with open(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s:%d: not JSON, kept as is", path, n)
                    keep.append(line)
                    continue
                if isinstance(event, dict) and event.get("global_id") == person_id:
                    dropped += 1
                else:
                    keep.append(line)
        if dropped:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "w") as f:
                f.writelines(keep)
            os.replace(tmp, path)
            removed += dropped
    return removed

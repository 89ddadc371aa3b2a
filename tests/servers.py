"""Test helpers: run an ASGI app on a real uvicorn server on a free loopback port; a small body embedder."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn

from reid.embedder import BaseEmbedder


class ColourEmbedder(BaseEmbedder):
    """A small deterministic body embedder (colour histograms) so body routes run without trained weights."""

    modality, model_id, dim = "body", "colour-hist-8", 24

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        from reid.images import to_rgb_array

        out = []
        for a in images:
            a = to_rgb_array(a)
            h = np.concatenate([np.histogram(a[..., c], bins=8, range=(0, 256))[0] for c in range(3)])
            h = h.astype(np.float32)
            out.append(h / np.linalg.norm(h))
        return np.stack(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app) -> Iterator[str]:
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(timeout=10)

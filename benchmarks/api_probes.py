"""Issue 13's outsider probes against a real ``reid-serve`` (loopback, fresh SQLite gallery): the status each gets
and how long it takes. Point ``--repo`` at another checkout (e.g. a ``git worktree`` of an older commit) to run
the same probes before and after a change, in one run each.

Examples:
    python benchmarks/api_probes.py
    git worktree add /tmp/before ac39dd6 && python benchmarks/api_probes.py --repo /tmp/before
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe

REPO = Path(__file__).resolve().parents[1]
LFW_PHOTO = REPO.parent / "shared" / "data" / "lfw" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
KEY = "probe-admin-key-0123456789"
H = {"X-API-Key": KEY}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def blank(w: int, h: int) -> bytes:
    return png(np.full((h, w, 3), 128, np.uint8))


def png_claiming(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    c = zlib.compressobj(9)
    idat = c.compress((b"\x00" + b"\x80" * w) * 4) + c.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Server:
    def __init__(self, repo: Path, folder: Path, extra_env: dict | None = None) -> None:
        self.repo, self.db = repo, folder / "g.db"
        keys = folder / "keys.json"
        keys.write_text(json.dumps([{"key": KEY, "name": "admin", "scopes": ["admin"]}]))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REID_")}
        env.update({"REID_API_KEYS": str(keys), **(extra_env or {})})
        self.proc = subprocess.Popen(
            [
                str(repo / ".venv/bin/python"),
                "-m",
                "services.serve",
                "--db",
                str(self.db),
                "--port",
                str(self.port),
            ],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        for _ in range(900):
            if self.proc.poll() is not None:
                self.output = self.proc.stdout.read()
                return
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)

    @property
    def up(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.up:
            self.proc.terminate()
            self.output = self.proc.communicate(timeout=30)[0]


def timed(fn) -> tuple[str, float]:
    t = time.perf_counter()
    try:
        r = fn()
        status = str(r.status_code) if hasattr(r, "status_code") else str(r)
    except httpx.HTTPError as e:
        status = f"no answer ({type(e).__name__})"
    return status, time.perf_counter() - t


def identify(url: str, data: bytes, name: str = "q.png", modality: str = "face", timeout: float = 120):
    return httpx.post(
        f"{url}/identify",
        headers=H,
        data={"modality": modality},
        files={"image": (name, data)},
        timeout=timeout,
    )


def behind(url: str, big: bytes, normal: bytes) -> tuple[str, float, float]:
    """Send ``big``; 0.3 s later a normal face identify. (big's status, big's seconds, normal's seconds)."""
    out: dict = {}

    def send_big() -> None:
        out["big"] = timed(lambda: identify(url, big))

    t = threading.Thread(target=send_big)
    t.start()
    time.sleep(0.3)
    _, normal_s = timed(lambda: identify(url, normal))
    t.join()
    return out["big"][0], out["big"][1], normal_s


def raw_status(url: str, head: bytes) -> tuple[str, float]:
    host, port = url.removeprefix("http://").split(":")
    t = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        try:
            data = s.recv(4096)
        except TimeoutError:
            data = b""
    status = data.split(b" ", 2)[1].decode() if data else "no answer (30 s)"
    return status, time.perf_counter() - t


def probes(url: str, repo: Path, db: Path) -> list[tuple[str, str, float, str]]:
    rows = []

    def add(name: str, status: str, seconds: float, note: str = "") -> None:
        rows.append((name, status, seconds, note))
        print(f"  {name}: {status} ({seconds:.2f} s) {note}", file=sys.stderr)

    normal = LFW_PHOTO.read_bytes()
    s, t = timed(lambda: identify(url, normal))
    add("normal LFW face identify, alone", s, t)
    s, t = timed(lambda: identify(url, png_claiming(20000, 20000), "bomb.png"))
    add("1 20000x20000 PNG bomb (4 KB), face identify", s, t)
    big, big_t, normal_t = behind(url, blank(6000, 4000), normal)
    add("2 6000x4000 blank PNG, face identify", big, big_t)
    add("2 normal identify sent 0.3 s after it", "-", normal_t, "(latency)")
    big, big_t, normal_t = behind(url, blank(2000, 2000), normal)
    add("2 2000x2000 blank PNG, face identify", big, big_t)
    add("2 normal identify sent 0.3 s after it", "-", normal_t, "(latency)")

    a = httpx.post(f"{url}/persons", headers=H, json={"display_name": "a"}).json()["id"]
    b = httpx.post(f"{url}/persons", headers=H, json={"display_name": "b"}).json()["id"]
    httpx.delete(f"{url}/persons/{b}", headers=H)
    c = httpx.post(f"{url}/persons", headers=H, json={"display_name": "c"}).json()["id"]
    add(
        "3 new person after the newest was erased",
        "reused" if c <= b else "new",
        0.0,
        f"(ids {a}, {b} erased, {c})",
    )
    s, t = timed(lambda: httpx.post(f"{url}/persons", headers=H, files={"image": ("a.jpg", normal)}))
    add("4 POST /persons with a multipart photo", s, t)
    s, t = timed(lambda: httpx.get(f"{url}/persons?offset=10000000000000000000", headers=H))
    add("4 GET /persons?offset=1e19", s, t)
    s, t = timed(lambda: httpx.post(f"{url}/persons", headers=H, json={"metadata": {"x": "y" * 5_000_000}}))
    add("5 5 MB metadata", s, t)
    deep: object = 1
    for _ in range(900):
        deep = {"k": deep}
    s, t = timed(
        lambda: httpx.post(f"{url}/persons", headers=H, json={"display_name": "deep", "metadata": deep})
    )
    add("5 900-deep metadata", s, t)
    cli = subprocess.run(
        [str(repo / ".venv/bin/python"), "-m", "gallery", "--db", str(db), "list"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    add("5 `python -m gallery list` afterwards", f"exit {cli.returncode}", 0.0)
    head = (
        f"POST /identify HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n"
    ).encode()
    s, t = raw_status(url, head)
    add("6 declared 10 GB upload, no body sent", s, t)
    mpo = io.BytesIO()
    im = Image.open(LFW_PHOTO)
    im.save(mpo, format="MPO", save_all=True, append_images=[im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    s, t = timed(lambda: identify(url, mpo.getvalue(), "phone.jpg"))
    add("9 phone MPO JPEG, face identify", s, t)
    r = httpx.get(f"{url}/ready")
    add("10 /ready without a key", str(r.status_code), 0.0, f"(fields {sorted(r.json())})")
    ui = httpx.get(f"{url}/ui/index.html")
    add(
        "10 page's Content-Security-Policy", "set" if "content-security-policy" in ui.headers else "none", 0.0
    )
    created = httpx.get(f"{url}/persons", headers=H).json()[0]["created_at"]
    add(
        "12 created_at in the API",
        "aware" if created.endswith(("Z", "+00:00")) else "naive",
        0.0,
        f"({created})",
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose reid-serve is probed (its .venv)")
    args = p.parse_args(argv)
    repo = args.repo.resolve()
    if not (repo / ".venv/bin/python").exists():
        (repo / ".venv").symlink_to(REPO / ".venv")  # a worktree of this repo: the same environment
    print(describe())
    print(
        f"reid-serve from {repo} (commit {git_head(repo)}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as d:
        long_keys = json.dumps([{"key": f"{KEY}-{i}", "name": f"k{i}", "scopes": ["read"]} for i in range(6)])
        (Path(d) / "k").mkdir()
        srv = Server(repo, Path(d) / "k", {"REID_API_KEYS": long_keys})
        started = srv.up
        srv.stop()
        leaked = KEY in srv.output
        rows.append(("7 start with inline REID_API_KEYS of 400+ chars", "started" if started else "crashed", 0.0,
                     "(a key in the output)" if leaked else ""))  # fmt: skip
        srv = Server(repo, Path(d))
        try:
            rows += probes(srv.url, repo, srv.db)
        finally:
            srv.stop()
    print(f"{'probe':52s} {'status':>22s} {'seconds':>8s}  note")
    for name, status, seconds, note in rows:
        print(f"{name:52s} {status:>22s} {seconds:8.2f}  {note}")
    return 0


def git_head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())

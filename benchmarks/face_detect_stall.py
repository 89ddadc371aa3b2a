"""One big blank photo and the face requests around it (issue 13).

Each face request is what the API does for an upload: decode the PNG/JPEG bytes, then
``DlibFaceEmbedder.embed_single`` (detect, align, embed). Measured per detector configuration:

- the time to answer a blank 6000x4000 PNG (~31 KB, under the API's 25 MP cap) and a blank 2000x2000 PNG
  (both end in FaceNotFoundError), alone;
- the latency of a normal request (an LFW photo) alone, and issued 0.3 s (and 1 s: decoding the 6000x4000 PNG
  alone takes ~0.3-0.4 s, so at 0.3 s its detection has not started yet) after a big blank one from another
  thread (the delay is that latency minus the latency alone).

Configurations: ``before`` emulates the code before issue 13 (full-size detection with the doubled retry, one lock
around every detection); ``full-size`` keeps full-size detection but with one detector per thread; ``after`` is
the default ``FaceDetector()`` (shrunk to 1280 px, retry capped at 8 MP, one detector per thread).

Examples:
    python benchmarks/face_detect_stall.py
    python benchmarks/face_detect_stall.py --configs after --repeats 5

Measured 2026-11-29 (``--repeats 3``; a machine shared with two other engineers' jobs, load average ~4 on 2 cores):

    machine: AMD EPYC, 2 cores, Python 3.11.7, torch 2.14.1+cu130 (2 threads), numpy 2.4.6
    config   6000x4000 s 2000x2000 s photo ms | photo N s after 6000x4000: 0.3 s     1 s | after 2000x2000: 0.3 s    1 s
    before         13.21        2.47      108 |                      169 (+60) 12948 (+12839) |     2118 (+2010) 2040 (+1932)
    full-size      12.22        2.00      138 |                      223 (+85)     240 (+102) |      250 (+112)   297 (+160)
    after           1.48        0.72      100 |                      174 (+74)     300 (+200) |      213 (+113)    153 (+53)
    after (--repeats 5, load ~1.5-2.8)  1.38  0.57  103 |            129 (+26)     237 (+134) |      248 (+145)    130 (+27)

The delay left in ``after`` is CPU sharing, not waiting: of the normal request's ~110 ms, ~105 ms is dlib's
embedding network, which slowed from 111 to 190 ms while a HOG scan ran in another thread (its own detection:
4 -> 8 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.face import DlibFaceEmbedder, FaceDetector, FaceNotFoundError
from reid.images import decode_image_bytes

LFW = Path(__file__).resolve().parents[2] / "shared/data/lfw"


class SerializedDetector(FaceDetector):
    """The pre-issue-13 locking: every detection of every thread behind one lock."""

    _serial = threading.Lock()

    def detect(self, image):
        with self._serial:
            return super().detect(image)


CONFIGS = {
    "before": lambda: SerializedDetector(max_side=None, retry_max_pixels=None),
    "full-size": lambda: FaceDetector(max_side=None, retry_max_pixels=None),
    "after": lambda: FaceDetector(),
}


def blank_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 255).save(buf, format="PNG", optimize=True)  # decoded to RGB like any upload
    return buf.getvalue()


def request(embedder: DlibFaceEmbedder, data: bytes) -> float:
    """Seconds to answer one upload (a face, or FaceNotFoundError)."""
    t = time.perf_counter()
    with contextlib.suppress(FaceNotFoundError):
        embedder.embed_single(decode_image_bytes(data), where="upload")
    return time.perf_counter() - t


def concurrent(embedder: DlibFaceEmbedder, big: bytes, small: bytes, after: float) -> tuple[float, float]:
    """(latency of the small request sent ``after`` s after the big one, time to answer the big one)."""
    out: dict[str, float] = {}
    t = threading.Thread(target=lambda: out.__setitem__("big", request(embedder, big)))
    t.start()
    time.sleep(after)
    out["small"] = request(embedder, small)
    t.join()
    return out["small"], out["big"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--photo", default=str(LFW / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"))
    ap.add_argument(
        "--after",
        type=float,
        nargs="+",
        default=[0.3, 1.0],
        help="seconds between the big and the normal request",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement (median reported)")
    args = ap.parse_args()
    small = Path(args.photo).read_bytes()
    bigs = {"6000x4000": blank_png(6000, 4000), "2000x2000": blank_png(2000, 2000)}
    print(describe())
    print(
        f"threads: 2 request threads (big + normal); dlib's HOG scan is single-threaded and releases the GIL; "
        f"torch {__import__('torch').get_num_threads()} intra-op threads; load average at start "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine)"
    )
    print(
        f"blank PNGs: {', '.join(f'{k} {len(v) / 1024:.0f} KB' for k, v in bigs.items())}; normal request: "
        f"{Path(args.photo).name} ({len(small) / 1024:.0f} KB); medians of {args.repeats} runs"
    )
    cases = [(k, a) for k in bigs for a in args.after]
    header = f"{'config':<10} {'6000x4000 s':>11} {'2000x2000 s':>11} {'photo ms':>9}" + "".join(
        f"{f'photo {a:g}s after {k} ms':>32}" for k, a in cases
    )
    print(header)
    for name in args.configs:
        emb = DlibFaceEmbedder(CONFIGS[name]())
        request(emb, small)  # warm-up: this thread's detector, the network
        med = lambda data, e=emb: statistics.median(request(e, data) for _ in range(args.repeats))  # noqa: E731
        alone_photo = med(small)
        alone = {k: med(v) for k, v in bigs.items()}
        during = {}
        for k, a in cases:
            runs = [concurrent(emb, bigs[k], small, a) for _ in range(args.repeats)]
            during[k, a] = statistics.median(r[0] for r in runs)
        row = (
            f"{name:<10} {alone['6000x4000']:>11.2f} {alone['2000x2000']:>11.2f} {alone_photo * 1e3:>9.0f}"
            + "".join(
                f"{f'{during[c] * 1e3:.0f} (+{(during[c] - alone_photo) * 1e3:.0f})':>32}" for c in cases
            )
        )
        print(row, flush=True)
    print("(+N): delay of the normal request over its latency alone")


if __name__ == "__main__":
    main()

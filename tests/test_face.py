"""reid.face: detection, alignment and dlib's embedder on real LFW faces; oracle = dlib's own descriptor call."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from reid.errors import ConfigError
from reid.face import (
    DlibFaceEmbedder,
    FaceDetector,
    FaceNotFoundError,
    MultipleFacesError,
    align,
    dlib_model_path,
)
from reid.images import read_image
from tests.conftest import missing

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


def test_detect_and_align(lfw_root: Path) -> None:
    img = read_image(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    faces = FaceDetector().detect(img)
    assert len(faces) == 1
    f = faces[0]
    x1, y1, x2, y2 = f.box
    assert f.landmarks.shape == (5, 2)
    assert np.all((f.landmarks[:, 0] >= x1 - 5) & (f.landmarks[:, 0] <= x2 + 5))
    assert np.all((f.landmarks[:, 1] >= y1 - 5) & (f.landmarks[:, 1] <= y2 + 5))
    chip = align(img, f)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8


def test_embedding_equals_dlib_descriptor(lfw_root: Path, embedder: DlibFaceEmbedder) -> None:
    import dlib

    path = lfw_root / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    img = read_image(path)
    ours = embedder.embed([str(path)])[0]
    det = dlib.get_frontal_face_detector()(img, 0)[0]
    shape = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))(img, det)
    net = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))
    ref = np.array(net.compute_face_descriptor(img, shape), dtype=np.float32)
    ref /= np.linalg.norm(ref)
    assert ours.shape == (128,) and ours.dtype == np.float32
    assert np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_same_person_closer_than_different(lfw_root: Path, embedder: DlibFaceEmbedder) -> None:
    a1, a2 = (lfw_root / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 3))
    b = lfw_root / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    v = embedder.embed([str(a1), str(a2), str(b)])
    assert v[0] @ v[1] > 0.9 > v[0] @ v[2]


def test_no_face_and_multiple_faces(lfw_root: Path, embedder: DlibFaceEmbedder) -> None:
    gray = np.full((150, 150, 3), 128, np.uint8)
    with pytest.raises(FaceNotFoundError, match=r"images\[1\]: no face found"):
        embedder.embed([str(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"), gray])
    centred = DlibFaceEmbedder(on_no_face="center")
    assert centred.embed([gray]).shape == (1, 128) and centred.fallbacks == 1
    two = np.concatenate(
        [
            read_image(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"),
            read_image(lfw_root / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"),
        ],
        axis=1,
    )
    found = embedder.detect_and_embed(two)
    assert len(found) == 2 and found[0][1] @ found[1][1] < 0.9
    with pytest.raises(MultipleFacesError, match="2 faces"):
        embedder.embed_single(two)


def test_mtcnn_finds_a_ceiling_camera_sized_face_that_hog_misses(lfw_root: Path) -> None:
    """A 16-px face (what a ceiling camera gives) in a head region enlarged 3x: MTCNN (weights in the
    facenet-pytorch wheel) finds it with dlib's landmarks inside its box; dlib's HOG does not."""
    import cv2

    if importlib.util.find_spec("facenet_pytorch") is None:
        missing("facenet-pytorch", "MTCNN's weights come in its wheel (scripts/setup.sh installs it)")
    img = read_image(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")  # face ~100 px in 150
    small = cv2.resize(img, (24, 24), interpolation=cv2.INTER_AREA)  # face ~16 px
    head = np.full((60, 90, 3), 200, np.uint8)
    head[24:48, 33:57] = small
    up = cv2.resize(head, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    faces = FaceDetector("mtcnn").detect(up)
    assert len(faces) == 1 and faces[0].score >= 0.9
    x1, y1, x2, y2 = (v / 3 for v in faces[0].box)
    assert 28 <= (x1 + x2) / 2 <= 62 and 18 <= (y1 + y2) / 2 <= 52  # on the pasted face
    assert faces[0].landmarks.shape == (5, 2)
    assert FaceDetector("hog", upsample=0, retry_upsample=False).detect(up) == []
    with pytest.raises(ConfigError, match="hog, cnn, haar or mtcnn"):
        FaceDetector("yunet")

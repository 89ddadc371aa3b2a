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


# ---------------------------------------------------------------------------------------- big photos (issue 13)
LFW_PHOTOS = [
    ("Aaron_Peirsol", 1),
    ("Abdullah_Gul", 1),
    ("Angela_Merkel", 3),  # found only by the retry with one more doubling
]


def _paste(face: np.ndarray, box_px: int, ref_box: tuple, canvas_hw=(3000, 4000), at=(1400, 2100)):
    """``face`` scaled so that its dlib box is ``box_px`` wide, pasted on a plain canvas; returns the canvas and
    the expected box in canvas pixels."""
    import cv2

    s = box_px / (ref_box[2] - ref_box[0])
    small = cv2.resize(face, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    canvas = np.full((*canvas_hw, 3), 235, np.uint8)
    y, x = at
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas, np.array(ref_box) * s + [x, y, x, y]


def test_small_photos_detect_and_embed_exactly_as_without_downscale(lfw_root: Path) -> None:
    """LFW photos are below the working size: same passes, same boxes, bit-identical embeddings."""
    paths = [str(lfw_root / n / f"{n}_{i:04d}.jpg") for n, i in LFW_PHOTOS]
    new = DlibFaceEmbedder(FaceDetector())
    old = DlibFaceEmbedder(FaceDetector(max_side=None, retry_max_pixels=None))  # detection as before issue 13
    np.testing.assert_array_equal(new.embed(paths), old.embed(paths))
    for p in paths:
        assert [f.box for f in new.detector.detect(read_image(p))] == [
            f.box for f in old.detector.detect(read_image(p))
        ]
    new.detector.detect(read_image(paths[2]))
    h, w = read_image(paths[2]).shape[:2]
    assert new.detector.last_passes == [(h, w, 0), (h, w, 1)]  # the retry's doubling is kept


@pytest.mark.parametrize("box_px", [80, 100])
def test_face_in_a_4000x3000_photo_is_found_in_original_pixels(lfw_root: Path, box_px: int) -> None:
    img = read_image(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    full = FaceDetector(max_side=None, retry_max_pixels=None)
    canvas, expected = _paste(img, box_px, full.detect(img)[0].box)
    det = FaceDetector()
    faces = det.detect(canvas)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, expected, atol=0.2 * box_px)  # original pixels, not working ones
    x1, y1, x2, y2 = faces[0].box
    assert np.all((faces[0].landmarks >= [x1 - 5, y1 - 5]) & (faces[0].landmarks <= [x2 + 5, y2 + 5]))
    assert all(h * w * 4**u <= det.retry_max_pixels for h, w, u in det.last_passes)
    # the embedding is that of the face, aligned on the original photo
    emb = DlibFaceEmbedder(det)
    assert emb.embed([canvas])[0] @ emb.embed([img])[0] > 0.9


def test_big_face_found_by_the_shrunk_first_pass_maps_back_to_the_full_resolution_box(lfw_root: Path) -> None:
    import cv2

    img = cv2.resize(
        read_image(lfw_root / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"),
        (2000, 2000),
        interpolation=cv2.INTER_CUBIC,
    )
    det = FaceDetector()
    (face,) = det.detect(img)
    assert det.last_passes == [(1280, 1280, 0)]
    # oracle: the same detector on a copy shrunk by hand, its box scaled back up
    shrunk = cv2.resize(img, (1280, 1280), interpolation=cv2.INTER_AREA)
    (small,) = FaceDetector(max_side=None, retry_max_pixels=None).detect(shrunk)
    k = 2000 / 1280
    x1, y1, x2, y2 = small.box
    np.testing.assert_allclose(face.box, [x1 * k, y1 * k, (x2 + 1) * k - 1, (y2 + 1) * k - 1], atol=1)
    # and it is about where the full-resolution scan puts it (HOG's pyramid steps are ~20 % apart)
    (ref,) = FaceDetector(max_side=None, retry_max_pixels=None).detect(img)
    np.testing.assert_allclose(face.box, ref.box, atol=0.2 * (ref.box[2] - ref.box[0]))


def test_blank_6000x4000_image_scans_a_bounded_number_of_pixels() -> None:
    """Was ~20 s of HOG (full image, then doubled to 12000x8000); now a 1280-px pass and one capped retry."""
    blank = np.full((4000, 6000, 3), 255, np.uint8)
    det = FaceDetector()
    with pytest.raises(FaceNotFoundError, match="no face found"):
        DlibFaceEmbedder(det).embed_single(blank)
    (h1, w1, u1), (h2, w2, u2) = det.last_passes
    assert (h1, w1, u1) == (853, 1280, 0)
    assert u2 == 0 and h2 * w2 <= 8_000_000 and w2 / h2 == pytest.approx(1.5, abs=0.01)
    assert FaceDetector(retry_upsample=False).passes(4000, 6000) == [(1280 / 6000, 0)]
    assert FaceDetector(max_side=None, retry_max_pixels=None).passes(4000, 6000) == [(1.0, 0), (1.0, 1)]
    with pytest.raises(ConfigError, match="max_side must be at least 64"):
        FaceDetector(max_side=10)


def test_a_long_detection_does_not_hold_up_another_thread(lfw_root: Path) -> None:
    """Detection no longer runs behind one lock: an LFW photo detected while a 2000x2000 blank image is being
    scanned in another thread comes back before that scan ends (it used to wait for all of it)."""
    import threading

    det = FaceDetector()
    photo = read_image(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    det.detect(photo)  # this thread's detector is ready
    started, big_done = threading.Event(), threading.Event()

    other_thread: list = []

    def scan_big() -> None:
        other_thread.extend(det.detect(photo))  # this thread's own detector finds the same face
        started.set()
        det.detect(np.full((2000, 2000, 3), 255, np.uint8))
        big_done.set()

    t = threading.Thread(target=scan_big)
    t.start()
    started.wait()
    import time

    time.sleep(0.15)  # the other thread is inside dlib by now (its scan takes ~1 s)
    faces = det.detect(photo)
    finished_first = not big_done.is_set()
    t.join()
    assert len(faces) == 1 and finished_first
    assert [f.box for f in other_thread] == [f.box for f in faces]
    np.testing.assert_array_equal(other_thread[0].landmarks, faces[0].landmarks)


def test_mtcnn_detects_on_the_shrunk_copy_too(lfw_root: Path) -> None:
    if importlib.util.find_spec("facenet_pytorch") is None:
        missing("facenet-pytorch", "MTCNN's weights come in its wheel (scripts/setup.sh installs it)")
    img = read_image(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    ref = FaceDetector(max_side=None, retry_max_pixels=None).detect(img)[0].box
    canvas, expected = _paste(img, 200, ref)
    det = FaceDetector("mtcnn")
    faces = det.detect(canvas)
    assert det.last_passes == [(960, 1280, 0)]  # MTCNN's pyramid on 12 MP took seconds
    assert len(faces) == 1
    centre = np.array([(faces[0].box[0] + faces[0].box[2]) / 2, (faces[0].box[1] + faces[0].box[3]) / 2])
    np.testing.assert_allclose(
        centre, [(expected[0] + expected[2]) / 2, (expected[1] + expected[3]) / 2], atol=40
    )

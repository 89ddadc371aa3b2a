"""dlib's face network on ONNX Runtime (issue 16 item 4): the reader of dlib's model file, the graph against dlib's
own network on real LFW chips (per chip and batched), the embedder's runtimes and worker threads agreeing."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from reid.errors import CheckpointError, ConfigError
from reid.face import DlibFaceEmbedder, FaceNotFoundError, align, dlib_model_path
from reid.face.dlib_onnx import DlibResnetOnnx, architecture, build_onnx, read_dlib_resnet
from reid.images import read_image

RESNET = "dlib_face_recognition_resnet_model_v1.dat"
PHOTOS = [  # includes a photo found only by the doubled retry (Angela_Merkel_0003)
    ("Aaron_Peirsol", 1),
    ("Aaron_Peirsol", 3),
    ("Abdullah_Gul", 1),
    ("Angela_Merkel", 3),
    ("Bill_Clinton", 2),
    ("Colin_Powell", 40),
    ("George_W_Bush", 7),
    ("Serena_Williams", 1),
]


@pytest.fixture(scope="module")
def paths(lfw_root: Path) -> list[str]:
    return [str(lfw_root / n / f"{n}_{i:04d}.jpg") for n, i in PHOTOS]


@pytest.fixture(scope="module")
def dlib_net():
    import dlib

    return dlib.face_recognition_model_v1(str(dlib_model_path(RESNET)))


@pytest.fixture(scope="module")
def onnx_net() -> DlibResnetOnnx:
    return DlibResnetOnnx(dlib_model_path(RESNET), threads=1)


@pytest.fixture(scope="module")
def chips(paths: list[str]) -> np.ndarray:
    emb = DlibFaceEmbedder(runtime="dlib", on_no_face="center", workers=1)
    return np.stack([align(read_image(p), emb.face_of(read_image(p), p)) for p in paths])


def test_reader_finds_dlib_architecture_in_the_wheel_file() -> None:
    import onnx

    mean, layers = read_dlib_resnet(dlib_model_path(RESNET))
    np.testing.assert_allclose(mean, [122.782, 117.001, 104.298], atol=1e-4)  # input_rgb_image_sized's means
    convs = [layer for layer in layers if layer.kind == "con"]
    assert len(convs) == 29 and convs[0].params["w"].shape == (32, 3, 7, 7)
    assert layers[-1].params["w"].shape == (256, 128)
    assert len(layers) == len(architecture())
    assert sum(v.size for layer in layers for v in layer.params.values()) == 5_614_592
    onnx.checker.check_model(build_onnx(mean, layers))  # a valid graph (the library skips this check at load)


def test_reader_refuses_other_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not dlib's face ResNet"):
        read_dlib_resnet(dlib_model_path("shape_predictor_5_face_landmarks.dat"))
    cut = tmp_path / "cut.dat"
    cut.write_bytes(dlib_model_path(RESNET).read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="not dlib's face ResNet"):
        read_dlib_resnet(cut)


@pytest.mark.realdata
def test_onnx_descriptors_equal_dlib_per_chip_and_batched(chips, dlib_net, onnx_net) -> None:
    """The oracle is dlib's own network: raw 128-d descriptors of real aligned LFW chips agree to 1e-5, one chip
    per call and all chips in one call."""
    ref = np.array(dlib_net.compute_face_descriptor(list(chips), 0), dtype=np.float32)
    batched = onnx_net(chips)
    one_by_one = np.concatenate([onnx_net(c[None]) for c in chips])
    assert batched.shape == (len(chips), 128) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, ref, atol=1e-5)
    np.testing.assert_allclose(one_by_one, ref, atol=1e-5)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert onnx_net.mismatch(dlib_net) is None


@pytest.mark.realdata
def test_embedder_runtimes_and_workers_agree(paths: list[str]) -> None:
    """Default embedder (ONNX Runtime, 2 workers) vs dlib's network photo by photo, with and without flip:
    same faces, same unit vectors to 1e-5, same model_id and decision card."""
    for flip in (False, True):
        old = DlibFaceEmbedder(runtime="dlib", workers=1, flip=flip)
        new = DlibFaceEmbedder(flip=flip, workers=2)
        assert (new.runtime, old.runtime) == ("onnx", "dlib")
        assert new.model_id == old.model_id == "dlib-resnet-v1-128" + ("-flip" if flip else "")
        assert new.decision["threshold"] == old.decision["threshold"]
        np.testing.assert_allclose(new.embed(paths), old.embed(paths), atol=1e-5)
        np.testing.assert_array_equal(new.embed(paths), DlibFaceEmbedder(flip=flip, workers=1).embed(paths))
    for p in paths[:3]:
        (f_old, v_old), (f_new, v_new) = old.embed_single(p), new.embed_single(p)
        assert f_old.box == f_new.box
        np.testing.assert_array_equal(f_old.landmarks, f_new.landmarks)
        np.testing.assert_allclose(v_new, v_old, atol=1e-5)


@pytest.mark.realdata
def test_worker_threads_keep_order_errors_and_fallback_counts(paths: list[str]) -> None:
    gray = np.full((150, 150, 3), 128, np.uint8)
    emb = DlibFaceEmbedder(workers=2)
    with pytest.raises(FaceNotFoundError, match=r"images\[2\]: no face found"):  # the first miss, in order
        emb.embed([paths[0], paths[1], gray, gray])
    centred = DlibFaceEmbedder(on_no_face="center", workers=2)
    v = centred.embed([gray, *paths[:3], gray, gray], batch_size=4)
    assert v.shape == (6, 128) and centred.fallbacks == 3
    np.testing.assert_array_equal(v[1:4], emb.embed(paths[:3]))


@pytest.mark.realdata
def test_concurrent_requests_get_their_own_answers(paths: list[str]) -> None:
    """What the API's thread pool does: embed_single from several threads at once on one embedder."""
    emb = DlibFaceEmbedder()
    expected = {p: emb.embed_single(p)[1] for p in paths}
    got: dict[str, list] = {p: [] for p in paths}

    def ask(p: str) -> None:
        for _ in range(3):
            got[p].append(emb.embed_single(p)[1])

    threads = [threading.Thread(target=ask, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in paths:
        assert len(got[p]) == 3
        for v in got[p]:
            np.testing.assert_array_equal(v, expected[p])


@pytest.mark.realdata
def test_a_graph_that_disagrees_with_dlib_is_not_used(monkeypatch, paths: list[str], caplog) -> None:
    monkeypatch.setattr(DlibResnetOnnx, "mismatch", lambda self, net: "differs by 0.5 (test)")
    with caplog.at_level(logging.WARNING, logger="reid.face.dlib_backend"):
        emb = DlibFaceEmbedder()
    assert emb.runtime == "dlib" and "differs by 0.5 (test)" in caplog.text
    monkeypatch.undo()
    np.testing.assert_allclose(emb.embed(paths[:2]), DlibFaceEmbedder().embed(paths[:2]), atol=1e-5)


def test_runtime_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="'onnx' or 'dlib'"):
        DlibFaceEmbedder(runtime="tensorrt")
    with pytest.raises(ConfigError, match="jitter > 1"):
        DlibFaceEmbedder(jitter=5)
    assert DlibFaceEmbedder(runtime="dlib", jitter=5).runtime == "dlib"

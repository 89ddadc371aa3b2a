"""training: configs with _BASE_, schedules, a real tiny training run, exact resume, exports, DDP via torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid.embedder import Embedder
from reid.errors import CheckpointError, ConfigError, TrainingDivergedError
from reid.models.checkpoint import read_checkpoint
from training.config import load_config
from training.engine import Trainer
from training.optim import warmup_cosine, warmup_multistep

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "model: {name: resnet18, embedding_dim: 64}\nlosses: [{name: triplet}]\n"
    )
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\nmodel: {pooling: gem}\noptimizer: {lr: 0.01}\n")
    cfg = load_config(tmp_path / "b.yaml", ["optimizer.lr=0.002", "train.epochs=3", "model.pretrained=null"])
    assert cfg["model"] == {**cfg["model"], "name": "resnet18", "embedding_dim": 64, "pooling": "gem"}
    assert cfg["optimizer"]["lr"] == 0.002 and cfg["train"]["epochs"] == 3
    assert cfg["optimizer"]["name"] == "adam"  # default filled in


def test_config_errors_name_key_and_file(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text("losses: [{name: triplet}]\noptimiser: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optimiser' \(set in .*typo\.yaml\)"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "x.yaml").write_text("_BASE_: y.yaml\n")
    (tmp_path / "y.yaml").write_text("_BASE_: x.yaml\n")
    with pytest.raises(ConfigError, match="_BASE_ cycle"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "ok.yaml").write_text("losses: [{name: triplet}]\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.depth' \(command line\)"):
        load_config(tmp_path / "ok.yaml", ["model.depth=50"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(tmp_path / "ok.yaml", ["model.name"])


def test_schedules() -> None:
    f = warmup_multistep(120, warmup_epochs=10, warmup_factor=0.01, milestones=[40, 70], gamma=0.1)
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.505) and f(10) == 1.0
    assert f(39.9) == 1.0 and f(40) == pytest.approx(0.1) and f(70) == pytest.approx(0.01)
    c = warmup_cosine(20, warmup_epochs=0, min_lr_factor=0.0)
    assert c(0) == pytest.approx(1.0) and c(10) == pytest.approx(0.5) and c(20) == pytest.approx(0.0)


def make_market(root: Path, ids: int = 6, per_cam: int = 3, size=(32, 16)) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for pid in range(1, ids * 2 + 1):
        base = rng.integers(30, 220, 3)
        for cam in (1, 2):
            for k in range(per_cam):
                img = np.clip(base + rng.integers(-25, 25, (*size, 3)), 0, 255).astype(np.uint8)
                if pid <= ids:
                    sub = "bounding_box_train"
                else:
                    sub = "query" if k == 0 and cam == 1 else "bounding_box_test"
                Image.fromarray(img).save(root / sub / f"{pid:04d}_c{cam}_{k}.jpg")
    return root


def tiny_cfg(tmp_path: Path, data: Path, **over) -> dict:
    cfg = load_config(
        REPO / "configs" / "reid" / "light_mobilenetv2.yaml",
        [
            f"data.root={data}",
            "data.p=3",
            "data.k=2",
            "data.workers=0",
            f"output_dir={tmp_path / 'run'}",
            "model.name=resnet18",
            "model.pretrained=null",
            "model.embedding_dim=32",
            "transforms.input_size=[32, 16]",
            "transforms.pad=2",
            "train.epochs=2",
            "train.max_minutes=null",
            "eval.every=1",
            "scheduler.warmup_epochs=1",
            "losses=[{name: cross_entropy, input: bn_features}, {name: triplet, margin: 0.3, "
            "miner: batch_hard, input: features}, {name: center, weight: 0.0005, lr: 0.5}]",
        ],
    )
    for k, v in over.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return make_market(tmp_path_factory.mktemp("market"))


def test_train_evaluate_and_export(market: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, market)
    result = Trainer(cfg, device="cpu").train()
    run = tmp_path / "run"
    assert result["epoch"] == 2 and len(result["history"]) == 2
    assert {"eval/mAP", "eval/rank1", "loss/cross_entropy", "loss/triplet", "loss/center", "lr"} <= set(
        result["history"][-1]
    )
    assert (run / "metrics.csv").read_text().count("\n") == 3
    assert any((run / "tb").iterdir())
    emb = Embedder.from_checkpoint(run / "final.pt")
    assert emb.input_size == (32, 16) and emb.dim == 32 and emb.modality == "body"
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()


def test_time_budget_schedule_ends_with_the_budget(market: Path, tmp_path: Path) -> None:
    """schedule_by_time: the LR follows elapsed minutes, training stops mid-epoch at the budget, and that last
    partial epoch is evaluated and exported."""
    cfg = tiny_cfg(tmp_path, market)
    cfg["train"] = {**cfg["train"], "epochs": 10_000, "max_minutes": 0.05, "schedule_by_time": True}
    cfg["scheduler"] = {
        **cfg["scheduler"],
        "name": "warmup_cosine",
        "warmup_epochs": 0,
        "min_lr_factor": 0.01,
    }
    cfg["eval"] = {**cfg["eval"], "every": 10_000}
    t = Trainer(cfg, device="cpu")
    result = t.train()
    last = result["history"][-1]
    assert 1 <= result["epoch"] < 10_000  # stopped by time, not by epochs
    assert 0.05 <= last["minutes"] < 0.2
    assert "eval/mAP" in last  # the partial last epoch was evaluated despite eval.every
    assert (tmp_path / "run" / "final.pt").is_file()
    # The LR follows the fraction of the budget spent, whatever number of steps fitted in it (a loaded
    # machine runs only a few): 90 % of the minutes spent is 90 % of the cosine, the budget's end its floor.
    base = float(cfg["optimizer"]["lr"])
    assert last["lr"] <= base
    budget_s = 60 * 0.05
    for spent, (lo, hi) in {
        0.0: (0.99, 1.0),
        0.5: (0.45, 0.56),
        0.9: (0.01, 0.08),
        1.0: (0.0099, 0.0101),
    }.items():
        t.train_seconds = spent * budget_s
        t.scheduler.step_to(t._schedule_position(total=1, epoch_seconds=0.0))
        assert lo * base <= t.optimizer.param_groups[0]["lr"] <= hi * base, spent


def test_channels_last_trains_the_same_model_and_saves_plain_weights(market: Path, tmp_path: Path) -> None:
    """train.channels_last is a layout choice only: the same seed gives the same weights (to float rounding),
    and the exported checkpoint holds contiguous tensors with the same model_id rules."""
    runs = {}
    for flag in (False, True):
        cfg = tiny_cfg(tmp_path / str(flag), market)
        cfg["train"] = {**cfg["train"], "epochs": 1, "channels_last": flag}
        t = Trainer(cfg, device="cpu")
        t.train()
        runs[flag] = t
    conv = next(m for m in runs[True].model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # Adam moves a weight by about lr per step whatever its gradient's size, so float rounding in a near-zero
    # gradient can move it by up to steps x lr; a layout bug (a permuted input) would move everything far more
    steps, lr = runs[True].global_step, float(runs[True].cfg["optimizer"]["lr"])
    params = zip(runs[False].model.named_parameters(), runs[True].model.parameters())
    for (name, a), b in params:
        torch.testing.assert_close(a, b, rtol=0, atol=steps * lr, msg=f"{name} differs with channels_last")
    x = torch.randn(4, 3, 32, 16)
    plain, nhwc = runs[False].model.eval(), runs[True].model.eval()
    nhwc.load_state_dict(plain.state_dict())
    torch.testing.assert_close(
        plain(x), nhwc(x.contiguous(memory_format=torch.channels_last)), rtol=1e-4, atol=1e-5
    )
    from reid.models.checkpoint import read_checkpoint

    state, _ = read_checkpoint(tmp_path / "True" / "run" / "final.pt")
    assert all(v.is_contiguous() for v in state.values())


def test_bfloat16_autocast_runs_convolutions_in_bf16_and_keeps_float32_weights(
    market: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """train.amp_dtype bfloat16 on CPU: convolutions see bf16, the loss and the weights stay float32, and one
    epoch lands near the float32 run (same seed); float16 on CPU and unknown names are config errors."""
    runs, seen = {}, set()
    for dtype in ("auto", "bfloat16"):
        # 64x32, not the tiny 32x16: oneDNN's bf16 3x3 stride-2 convolution returns NaN for a 2x1 output on
        # this CPU (torch 2.14.1), which ResNet-18's third stage gives at 32x16; real inputs never get that small
        cfg = tiny_cfg(tmp_path / dtype, market)
        cfg["transforms"] = {**cfg["transforms"], "input_size": [64, 32]}
        cfg["train"] = {**cfg["train"], "epochs": 1, "amp": True, "amp_dtype": dtype}
        t = Trainer(cfg, device="cpu")
        if dtype == "bfloat16":
            conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
            conv.register_forward_hook(lambda m, i, o: seen.add(o.dtype) if m.training else None)
        t.train()
        runs[dtype] = t
    assert seen == {torch.bfloat16}, "CPU autocast did not reach the convolutions"
    # emulated bfloat16 is several times slower than float32: the run says so where the CPU lacks it
    warned = "has no native bfloat16" in caplog.text
    assert warned == (not torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert runs["auto"].amp_dtype is None  # auto is float32 on CPU: existing CPU recipes are unchanged
    assert all(p.dtype == torch.float32 for p in runs["bfloat16"].model.parameters())
    assert np.isfinite(runs["bfloat16"]._last_values["loss/total"])
    a = torch.cat([p.detach().flatten() for p in runs["auto"].model.parameters()])
    b = torch.cat([p.detach().flatten() for p in runs["bfloat16"].model.parameters()])
    start = torch.cat(
        [
            p.detach().flatten()
            for p in Trainer(tiny_cfg(tmp_path / "s", market), device="cpu").model.parameters()
        ]
    )
    # bf16 rounding moves the path a little, not somewhere else: far closer to the fp32 run than either is to
    # the start (a wrong cast, say inputs never normalised, lands elsewhere)
    assert (a - b).norm() < 0.5 * (a - start).norm()
    for bad, match in (("float16", "needs a CUDA device"), ("half", "must be one of")):
        cfg = tiny_cfg(tmp_path / bad, market)
        cfg["train"] = {**cfg["train"], "amp_dtype": bad}
        with pytest.raises(ConfigError, match=match):
            Trainer(cfg, device="cpu")


def test_init_weights_loads_the_whole_model_and_refuses_one_that_saw_validation_identities(
    market: Path, tmp_path: Path
) -> None:
    """train.init_weights: every model tensor of an exported model is loaded (the classifier, in the loss, is
    not); a model that trained on any identity the new run validates on, or of another architecture, is refused."""

    def cfg_for(name: str, val: int, extends: int = 0, init: Path | None = None) -> dict:
        cfg = tiny_cfg(tmp_path / name, market)
        cfg["data"] = {**cfg["data"], "val_identities": val, "val_extends": extends, "extra_train": []}
        cfg["train"] = {**cfg["train"], "epochs": 1, "init_weights": str(init) if init else None}
        return cfg

    Trainer(cfg_for("held2", 2), device="cpu").train()
    parent = tmp_path / "held2" / "run" / "final.pt"
    state, parent_meta = read_checkpoint(parent)
    child = Trainer(cfg_for("child", 2, init=parent), device="cpu")  # the same held-out identities
    loaded = child.model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert child.init_model_id == parent_meta.model_id
    child.export(tmp_path / "child.pt")  # the exported model names the one it started from
    assert read_checkpoint(tmp_path / "child.pt")[1].extra["init_weights_model_id"] == child.init_model_id
    fresh = Trainer(cfg_for("fresh", 2), device="cpu").model.state_dict()
    assert not torch.equal(fresh["head.projection.weight"], state["head.projection.weight"])
    # extending the parent's split adds an identity the parent trained on
    with pytest.raises(ConfigError, match=r"trained on 1 of this run's 3 validation identities"):
        Trainer(cfg_for("extended", 3, extends=2, init=parent), device="cpu")

    # a model whose config held nothing out trained on every identity (exported untrained: only its config counts)
    Trainer(cfg_for("all", 0), device="cpu").export(tmp_path / "all.pt")
    with pytest.raises(ConfigError, match=r"trained on 2 of this run's 2 validation identities"):
        Trainer(cfg_for("leak", 2, init=tmp_path / "all.pt"), device="cpu")
    other = cfg_for("arch", 2, init=parent)
    other["model"] = {**other["model"], "name": "mobilenetv2"}
    with pytest.raises(ConfigError, match=r"is a 'resnet18' model; this config builds 'mobilenetv2'"):
        Trainer(other, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(cfg_for("missing", 2, init=tmp_path / "nope.pt"), device="cpu")
    other_data = cfg_for("kwargs", 2, init=parent)
    other_data["data"] = {**other_data["data"], "root": str(make_market(tmp_path / "elsewhere"))}
    with pytest.raises(ConfigError, match="cannot be checked"):
        Trainer(other_data, device="cpu")
    # --resume restores its own weights: the model to start from is not read (here it does not exist)
    gone = cfg_for("held2", 2, init=tmp_path / "nope.pt")
    resumed = Trainer(gone, resume=tmp_path / "held2" / "run" / "last.pt", device="cpu")
    assert resumed.init_model_id is None and resumed.epoch == 1


def test_evaluate_command_prints_metrics_and_writes_nothing_beside_the_checkpoint(
    market: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from training.cli import main
    from training.config import dump_config

    cfg = tiny_cfg(tmp_path, market)
    cfg["train"] = {**cfg["train"], "epochs": 1}
    Trainer(cfg, device="cpu").train()
    shipped = tmp_path / "models"
    shipped.mkdir()
    (tmp_path / "run" / "final.pt").rename(shipped / "model.pt")
    config = dump_config(cfg, tmp_path / "config.yaml")
    main(["evaluate", "--config", str(config), "--checkpoint", str(shipped / "model.pt")])
    metrics = json.loads(capsys.readouterr().out)
    assert 0 < metrics["mAP"] <= 1 and 0 <= metrics["rank1"] <= 1
    assert [p.name for p in shipped.iterdir()] == ["model.pt"]


def test_a_loss_that_turns_nan_stops_training_with_the_step_and_terms(market: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, market)
    t = Trainer(cfg, device="cpu")
    with torch.no_grad():
        t.model.head.bnneck.weight.fill_(float("nan"))  # NaN reaches the ID loss's logits on the first step
    before = [p.detach().clone() for p in t.model.backbone.parameters()]
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1 \(.*loss/cross_entropy nan"):
        t.train()
    # no optimiser step was taken with the NaN loss
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.backbone.parameters()))


def test_resume_continues_exactly(market: Path, tmp_path: Path) -> None:
    straight = Trainer(tiny_cfg(tmp_path / "a", market), device="cpu")
    straight.train()
    first = tiny_cfg(tmp_path / "b", market)
    first["train"] = {**first["train"], "epochs": 1}
    Trainer(first, device="cpu").train()
    resumed = Trainer(
        tiny_cfg(tmp_path / "b", market), resume=tmp_path / "b" / "run" / "last.pt", device="cpu"
    )
    assert resumed.epoch == 1
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")
    torch.testing.assert_close(straight.loss.state_dict(), resumed.loss.state_dict())


def test_resume_errors(market: Path, tmp_path: Path) -> None:
    from reid.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(tiny_cfg(tmp_path, market), resume=tmp_path / "nope.pt", device="cpu")
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a training state"):
        Trainer(tiny_cfg(tmp_path, market), resume=tmp_path / "bad.pt", device="cpu")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_loads_and_builds(path: Path, market: Path, tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    for person in range(4):
        for i in range(3):
            (faces / f"p{person}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((24, 24, 3), 40 * person + i, np.uint8)).save(
                faces / f"p{person}" / f"{i}.jpg"
            )
    root = faces if "face" in str(path) else market
    cfg = load_config(
        path,
        [
            f"data.root={root}",
            "model.pretrained=null",
            f"output_dir={tmp_path / 'o'}",
            "data.p=2",
            "data.k=2",
        ],
    )
    if cfg["data"]["val_identities"]:  # the tiny data set holds 6 training identities, and no extra views
        cfg["data"].update(val_identities=3 if cfg["data"]["val_extends"] else 2, extra_train=[])
        if cfg["data"]["val_extends"]:
            cfg["data"]["val_extends"] = 2
    # a model to start from is a repo file of this config's architecture; the tiny data cannot host it
    init = cfg["train"]["init_weights"]
    if init:
        _, meta = read_checkpoint(REPO / init)
        assert meta.arch == cfg["model"]["name"]
        assert meta.extra["config"]["data"]["root"] == load_config(path)["data"]["root"]
        cfg["train"]["init_weights"] = None
    trainer = Trainer(cfg, device="cpu")
    assert trainer.model.arch == cfg["model"]["name"] and len(trainer.loss.terms) == len(cfg["losses"])


def test_exports_match_pytorch(market: Path, tmp_path: Path) -> None:
    from training.export import compare_exports, export_onnx, export_torchscript

    cfg = tiny_cfg(tmp_path, market)
    cfg["train"] = {**cfg["train"], "epochs": 1}
    Trainer(cfg, device="cpu").train()
    ckpt = tmp_path / "run" / "final.pt"
    ts = export_torchscript(ckpt, tmp_path / "m.ts")
    onnx = export_onnx(ckpt, tmp_path / "m.onnx")
    images = [str(p) for p in sorted((market / "query").glob("*.jpg"))[:4]]
    diff = compare_exports(ckpt, ts, onnx, images)
    assert diff["torchscript"] < 1e-4 and diff["onnx"] < 1e-4


def test_static_int8_export_stays_close_to_fp32(market: Path, tmp_path: Path) -> None:
    from training.export import OnnxEmbedder, calibration_batch, export_onnx, quantize_onnx_int8

    cfg = tiny_cfg(tmp_path, market)
    cfg["train"] = {**cfg["train"], "epochs": 1}
    Trainer(cfg, device="cpu").train()
    ckpt = tmp_path / "run" / "final.pt"
    fp32 = export_onnx(ckpt, tmp_path / "m.onnx")
    train = [str(p) for p in sorted((market / "bounding_box_train").glob("*.jpg"))[:48]]
    int8 = quantize_onnx_int8(fp32, tmp_path / "m.int8.onnx", calibration_batch(ckpt, train))
    assert int8.stat().st_size < fp32.stat().st_size
    images = [str(p) for p in sorted((market / "query").glob("*.jpg"))]
    a = OnnxEmbedder(fp32, ckpt).embed(images)
    b = OnnxEmbedder(int8, ckpt).embed(images)
    assert (a * b).sum(1).mean() > 0.9  # unit vectors: cosine of INT8 vs fp32 embeddings
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx_int8(fp32, tmp_path / "x.onnx")


def _mobilenetv2_onnx(tmp_path: Path) -> tuple[Path, Path]:
    """A small random MobileNetV2 like the shipped body model's architecture, exported to ONNX."""
    from reid.models import build_model, save_checkpoint
    from training.export import export_onnx

    torch.manual_seed(0)
    model = build_model("mobilenetv2", embedding_dim=32, pooling="gem", last_stride=1)
    ckpt = tmp_path / "mnv2.pt"
    save_checkpoint(ckpt, model.eval(), input_size=(64, 32))
    return ckpt, export_onnx(ckpt, tmp_path / "mnv2.onnx")


def test_int8_exclusion_presets_name_mobilenetv2_nodes(tmp_path: Path) -> None:
    from training.export import int8_exclusions

    _, fp32 = _mobilenetv2_onnx(tmp_path)
    assert int8_exclusions(fp32, ["first_conv"]) == [
        "/backbone/backbone.0/backbone.0.0/Conv",
        "/backbone/backbone.0/backbone.0.2/Clip",  # its ReLU6 goes with it
    ]
    early = int8_exclusions(fp32, ["early"])  # at the first conv's output resolution, after it
    assert [n for n in early if n.endswith("Conv")] == [
        "/backbone/backbone.1/conv/conv.0/conv.0.0/Conv",
        "/backbone/backbone.1/conv/conv.1/Conv",
        "/backbone/backbone.2/conv/conv.0/conv.0.0/Conv",
    ]
    assert len([n for n in int8_exclusions(fp32, ["depthwise"]) if n.endswith("Conv")]) == 17
    assert int8_exclusions(fp32, ["head"]) == ["/head/projection/MatMul"]
    with pytest.raises(ValueError, match="neither presets"):
        int8_exclusions(fp32, ["early", "no_such_node"])


def test_excluded_nodes_stay_float_in_the_file_and_when_onnx_runtime_runs_it(tmp_path: Path, caplog) -> None:
    """The default exclusion keeps its convs float in the graph and in what ONNX Runtime runs; a lone conv
    excluded between quantised neighbours is quantised at load by ONNX Runtime, and that is said."""
    import logging

    import onnx

    from training.export import int8_exclusions, quantize_onnx_int8, requantised_at_load

    _, fp32 = _mobilenetv2_onnx(tmp_path)
    calib = np.random.default_rng(0).standard_normal((16, 3, 64, 32)).astype(np.float32)
    out = quantize_onnx_int8(fp32, tmp_path / "m.int8.onnx", calib)
    model = onnx.load(str(out))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    floats = set(int8_exclusions(fp32, ["early"]))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 52 and {n.name for n in convs} >= {f for f in floats if f.endswith("Conv")}
    for n in convs:  # excluded: float weights; every other conv: INT8 weights behind a DequantizeLinear
        assert (producer.get(n.input[1]) == "DequantizeLinear") == (n.name not in floats), n.name
    settings = json.loads({p.key: p.value for p in model.metadata_props}["reid_int8"])
    assert (
        settings["float_nodes"] == int8_exclusions(fp32, ["early"]) and settings["calibrate"] == "percentile"
    )
    assert requantised_at_load(out, sorted(floats)) == []

    lone = "/backbone/backbone.2/conv/conv.0/conv.0.0/Conv"  # a 1x1 expansion between quantised tensors
    with caplog.at_level(logging.WARNING, logger="training.export"):
        quantize_onnx_int8(fp32, tmp_path / "lone.int8.onnx", calib, exclude=[lone])
    assert "WeightBiasQuantization" in caplog.text and lone in caplog.text


@pytest.mark.realdata
def test_int8_of_the_shipped_body_model_carries_its_own_id_and_card(
    cuhk03_root: Path, tmp_path: Path
) -> None:
    """The default INT8 of the shipped body model: calibrated on training identities, measured on (a part of)
    the held-out ones, its own model_id and decision; its embeddings of real test crops stay close to fp32."""
    import random

    from reid.errors import CheckpointError
    from reid.models import build_model, load_checkpoint, save_checkpoint
    from services.settings import DEFAULT_BODY_CHECKPOINT
    from training.export import OnnxEmbedder, export_int8, export_onnx, held_out_split

    ckpt = DEFAULT_BODY_CHECKPOINT
    _, meta = load_checkpoint(ckpt)
    train, query, gallery, every = held_out_split(meta.extra["config"], cuhk03_root)
    assert not {r.pid for r in train} & {r.pid for r in every}  # calibration never sees validation people
    ids = sorted({r.pid for r in query})[:20]  # a small validation subset keeps the test short
    part = [[r for r in rs if r.pid in ids] for rs in (query, gallery, every)]
    calibration = [r.path for r in random.Random(0).sample(train, 64)]
    fp32 = export_onnx(ckpt, tmp_path / "model.onnx")
    path, model_id, card = export_int8(ckpt, fp32, tmp_path / "model.int8.onnx", calibration, part)
    assert model_id.startswith(meta.model_id + "-int8-") and len(model_id) == len(meta.model_id) + 18
    v = card["validation"]
    assert v["cosine_to_fp32"]["mean"] >= 0.97 and v["int8"]["mAP"] >= v["fp32"]["mAP"] - 0.05

    emb = OnnxEmbedder(path, ckpt, threads=1)
    assert emb.model_id == model_id and emb.decision["threshold"] == card["decision"]["threshold"]
    assert emb.decision["threshold"] != Embedder.from_checkpoint(ckpt).decision["threshold"]
    crops = [str(p) for p in sorted((cuhk03_root / "bounding_box_test").glob("*.jpg"))[::100]]
    a, b = emb.embed(crops), OnnxEmbedder(fp32, ckpt, threads=1).embed(crops)
    cos = (a * b).sum(1)
    assert cos.mean() >= 0.97 and cos.min() >= 0.8  # validation with 256 calibration images: 0.985 / 0.85
    emb.flip = True  # flip-averaged INT8 vectors: their own id, and no card was made for them
    assert emb.model_id == model_id + "-flip" and emb.decision is None
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("mobilenetv2", embedding_dim=256), input_size=(192, 96))
    with pytest.raises(CheckpointError, match="quantised from"):
        OnnxEmbedder(path, other)


def test_export_int8_command_calibrates_on_training_identities_and_writes_a_card(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """``export --int8``: calibration images come from the identities the checkpoint trained on (also when a
    folder is given), the held-out ones measure the card, and the file carries its own model_id and card."""
    import onnx

    import training.export
    from reid.models import load_checkpoint
    from training.cli import main

    market = make_market(tmp_path / "market", ids=10)
    cfg = tiny_cfg(tmp_path, market, seed=3)
    cfg["data"].update(val_identities=6, extra_train=[])
    cfg["train"] = {**cfg["train"], "epochs": 1}
    Trainer(cfg, device="cpu").train()
    ckpt = tmp_path / "run" / "final.pt"
    _, meta = load_checkpoint(ckpt)
    held = {r.pid for r in training.export.held_out_split(meta.extra["config"])[3]}
    used: list[list[str]] = []
    real = training.export.export_int8

    def spy(checkpoint, fp32, out, images, *args, **kwargs):
        used.append(list(images))
        return real(checkpoint, fp32, out, images, *args, **kwargs)

    monkeypatch.setattr(training.export, "export_int8", spy)
    folder = str(market / "bounding_box_train")
    for extra in ([], ["--calibration-images", folder]):
        assert (
            main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"), "--int8", *extra]) == 0
        )
    assert len(held) == 6 and all(used) and len(used) == 2
    assert not {int(Path(p).name[:4]) for paths in used for p in paths} & held
    out = capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "x" / "model.int8.onnx")).metadata_props}
    assert props["reid_model_id"].startswith(meta.model_id + "-int8-") and props["reid_model_id"] in out
    card = json.loads(props["reid_card"])
    assert card["validation"]["queries"] > 0 and "threshold" in card["decision"] and "validation (" in out


@pytest.mark.realdata
def test_exports_match_pytorch_on_real_images(cuhk03_root: Path, tmp_path: Path) -> None:
    from reid.models import build_model, save_checkpoint
    from training.export import compare_exports, export_onnx, export_torchscript

    ckpt = tmp_path / "m.pt"
    save_checkpoint(
        ckpt, build_model("mobilenetv2", pretrained="deepsort-mobilenetv2", embedding_dim=128).eval()
    )
    images = [str(p) for p in sorted((cuhk03_root / "query").glob("*.jpg"))[:4]]
    diff = compare_exports(
        ckpt, export_torchscript(ckpt, tmp_path / "m.ts"), export_onnx(ckpt, tmp_path / "m.onnx"), images
    )
    assert diff["torchscript"] < 1e-4 and diff["onnx"] < 1e-4


@pytest.mark.slow
def test_ddp_two_processes_with_torchrun(market: Path, tmp_path: Path) -> None:
    cfgfile = tmp_path / "ddp.yaml"
    cfgfile.write_text(f"_BASE_: {REPO / 'configs/reid/light_mobilenetv2.yaml'}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "training",
        "train",
        "--config",
        str(cfgfile),
        "--device",
        "cpu",
        f"data.root={market}",
        "data.p=2",
        "data.k=2",
        "data.workers=0",
        f"output_dir={tmp_path / 'ddp'}",
        "model.name=resnet18",
        "model.pretrained=null",
        "model.embedding_dim=16",
        "transforms.input_size=[32,16]",
        "train.epochs=1",
        "train.max_minutes=null",
        "eval.every=1",
        "losses=[{name: cross_entropy, input: bn_features}, {name: triplet, miner: batch_hard}]",
    ]
    # own process group: on a hang, kill torchrun *and* its workers, so nothing outlives the test
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun with 2 processes did not finish in 300 s")
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout[stdout.index("{") :])
    assert out["epochs"] == 1 and "eval/mAP" in out["last"]
    assert (tmp_path / "ddp" / "final.pt").is_file()


def test_validation_identities_choose_best_and_the_card_ships_in_the_checkpoint(
    tmp_path: Path, capsys
) -> None:
    """best.pt follows the held-out validation identities' metric, the test split is only logged beside it;
    reid-calibrate then puts a decision calibrated on those same identities into the checkpoint."""
    import torch as _torch

    from reid.cli.calibrate import main as calibrate
    from reid.cli.calibrate import validation_records
    from reid.models.checkpoint import read_checkpoint

    market = make_market(tmp_path / "market", ids=10)
    extra = tmp_path / "extra" / "bounding_box_train"
    extra.mkdir(parents=True)
    for f in sorted((market / "bounding_box_train").iterdir())[::2]:  # other views of the same identities
        Image.open(f).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(extra / f"{f.stem}_x.jpg")
    cfg = tiny_cfg(tmp_path, market, seed=3)
    cfg["data"].update(val_identities=6, extra_train=[str(extra.parent)])
    cfg["train"]["epochs"] = 3
    trainer = Trainer(cfg, device="cpu")
    held = {r.pid for r in trainer.val_set.query}
    assert len(held) == 6 and not held & set(trainer.train_set.pid_map)
    assert len(trainer.train_set) == 4 * 6 + 4 * 3  # four training identities, labeled + extra views
    result = trainer.train()
    hist = [h for h in result["history"] if "eval/mAP" in h]
    assert all("eval/test/mAP" in h for h in hist)
    best_epoch = max(hist, key=lambda h: h["eval/mAP"])["epoch"]
    _state, meta = read_checkpoint(tmp_path / "run" / "best.pt")
    assert meta.extra["epoch"] == best_epoch and meta.extra["metrics"]["mAP"] == max(
        h["eval/mAP"] for h in hist
    )
    paths, labels = validation_records(meta.extra["config"])
    assert {int(p) for p in labels} == held and any("_x.jpg" in p for p in paths)
    assert calibrate(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--far", "0.2", "--write"]) == 0
    out = capsys.readouterr().out
    assert "6 validation identities held out" in out and "<- chosen" in out
    emb = Embedder.from_checkpoint(tmp_path / "run" / "best.pt")  # re-verifies the weights' hash
    assert emb.model_id == meta.model_id
    d = emb.decision
    assert d["target_far"] == 0.2 and d["cohort"].shape == (2, 32) and np.isfinite(d["threshold"])
    assert d["beta"] in (0.0, 0.25, 0.5, 0.75, 1.0) and d["rule"] == ("raw" if d["beta"] == 0 else "margin")
    assert d["by_size"]  # raw or margin, the threshold comes by gallery size
    assert "validation identities" in d["data"]
    assert (
        _torch.load(tmp_path / "run" / "best.pt", weights_only=True)["extra"]["decision"]["threshold"]
        == d["threshold"]
    )


def test_evaluators_are_chosen_by_name_and_a_bad_one_fails_before_training(
    market: Path, tmp_path: Path
) -> None:
    from training.evaluators import EVALUATORS

    assert EVALUATORS.names() == ["lfw", "rank"]
    cfg = tiny_cfg(tmp_path, market)
    cfg["eval"] = {**cfg["eval"], "type": "roc"}
    with pytest.raises(ConfigError, match="unknown evaluator .*'roc'.*lfw, rank"):
        Trainer(cfg, device="cpu")
    cfg["eval"] = {**cfg["eval"], "type": "lfw", "lfw_root": None}
    with pytest.raises(ConfigError, match="eval.lfw_root is not set"):
        Trainer(cfg, device="cpu")

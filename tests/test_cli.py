"""The reid command-line tools run end to end and turn user mistakes into exit code 2 with a message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.models import build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def tiny_market(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("m")
    rng = np.random.default_rng(0)
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (root / sub).mkdir()
    for pid in range(1, 6):
        base = rng.integers(0, 255, 3)
        for cam in (1, 2):
            for k in range(2):
                img = np.clip(base + rng.integers(-20, 20, (64, 32, 3)), 0, 255).astype(np.uint8)
                sub = "query" if (cam == 1 and k == 0) else "bounding_box_test"
                Image.fromarray(img).save(root / sub / f"{pid:04d}_c{cam}_{k}.jpg")
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(
            root / "bounding_box_train" / f"{pid + 10:04d}_c1_0.jpg"
        )
    return root


def test_reid_eval_with_checkpoint(tiny_market: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("osnet_x0_25"), input_size=(64, 32))
    r = _run(
        "-m",
        "reid.cli.evaluate",
        "--data",
        str(tiny_market),
        "--checkpoint",
        str(ckpt),
        "--output",
        str(tmp_path / "out"),
    )
    assert r.returncode == 0, r.stderr
    assert "rank1" in r.stdout and "mAP" in r.stdout
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["valid_queries"] == 5 and 0.0 <= res["mAP"] <= 1.0
    assert (tmp_path / "out" / "cmc.png").stat().st_size > 1000
    assert (tmp_path / "out" / "ranked.png").stat().st_size > 1000
    assert (tmp_path / "out" / "cam_query0.png").is_file()


def test_reid_eval_documented_image_folder_example_runs(cuhk03_root: Path, tmp_path: Path) -> None:
    """The identity-folders example of reid-eval's help, exactly as written, on real crops without cameras."""
    import os
    import shlex
    import shutil

    import reid.cli.evaluate

    line = next(x for x in reid.cli.evaluate.__doc__.splitlines() if "--dataset image_folder" in x)
    argv = shlex.split(line.strip())
    assert argv[0] == "reid-eval"
    data = argv[argv.index("--data") + 1]
    ckpt = argv[argv.index("--checkpoint") + 1]
    # identity folders from CUHK03-NP test crops (camera in the file name is ignored by image_folder)
    crops = sorted((cuhk03_root / "bounding_box_test").glob("*.jpg"))
    by_pid: dict[str, list[Path]] = {}
    for f in crops:
        by_pid.setdefault(f.name.split("_")[0], []).append(f)
    for pid in sorted(by_pid)[:8]:
        (tmp_path / data / pid).mkdir(parents=True)
        for f in by_pid[pid][:4]:
            shutil.copy(f, tmp_path / data / pid / f.name)
    save_checkpoint(tmp_path / ckpt, build_model("osnet_x0_25"), input_size=(64, 32))
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # run from tmp_path with this worktree's package
    r = subprocess.run(
        [sys.executable, "-m", "reid.cli.evaluate", *argv[1:]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "rank1" in r.stdout and "mAP" in r.stdout
    res = json.loads((tmp_path / argv[argv.index("--output") + 1] / "results.json").read_text())
    assert res["valid_queries"] == 4  # 8 identities, half tested: every query keeps its true matches
    assert 0.0 < res["mAP"] <= 1.0


def test_reid_eval_user_errors_exit_2(tmp_path: Path) -> None:
    r = _run("-m", "reid.cli.evaluate", "--data", str(tmp_path / "nope"), "--model", "resnet18")
    assert r.returncode == 2
    assert "error:" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = _run("-m", "reid.cli.evaluate", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_reid_embed(tiny_market: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "m.pt"
    meta = save_checkpoint(ckpt, build_model("resnet18", embedding_dim=32), input_size=(64, 32))
    r = _run(
        "-m",
        "reid.cli.embed",
        "--checkpoint",
        str(ckpt),
        "--images",
        str(tiny_market / "query"),
        "--output",
        str(tmp_path / "e"),
    )
    assert r.returncode == 0, r.stderr
    v = np.load(tmp_path / "e.npy")
    info = json.loads((tmp_path / "e.json").read_text())
    assert v.shape == (5, 32) and info["model_id"] == meta.model_id and len(info["paths"]) == 5
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_help_has_examples() -> None:
    for mod in ("reid.cli.evaluate", "reid.cli.embed"):
        r = _run("-m", mod, "--help")
        assert r.returncode == 0 and "Examples" in r.stdout


def test_gallery_list_and_show_survive_deeply_nested_stored_json(db_url: str) -> None:
    from gallery import Gallery

    deep: dict = {}
    leaf = deep
    for _ in range(899):  # 900 levels: printing it used to raise RecursionError for the whole gallery
        leaf["a"] = {}
        leaf = leaf["a"]
    nested = {"l1": {"l2": {"l3": [1, {"l5": "x"}]}}}
    with Gallery(db_url, index_dir=None) as g:
        first = g.create_person("first", metadata=nested)
        bad = g.create_person("deep", metadata=deep, consent={"given": True, "chain": deep})
        last = g.create_person("last", consent={"given": True})
    r = _run("-m", "gallery", "--db", db_url, "list")
    assert r.returncode == 0, r.stderr[-2000:]
    listed = {p["id"]: p for p in json.loads(r.stdout)}
    assert sorted(listed) == [first, bad, last]
    assert listed[bad]["metadata"] == "<metadata: too deep to show (nesting > 64)>"
    assert listed[bad]["consent"] == "<consent: too deep to show (nesting > 64)>"
    assert listed[bad]["display_name"] == "deep"
    assert listed[first]["metadata"] == nested and listed[last]["consent"] == {"given": True}
    for pid in (first, bad, last):
        r = _run("-m", "gallery", "--db", db_url, "show", str(pid))
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout) == listed[pid]

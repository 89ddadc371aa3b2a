"""Service settings from REID_* environment variables: values, defaults and clear errors."""

from __future__ import annotations

import json

import pytest

from reid.errors import ConfigError
from services.settings import ApiKey, Settings


def test_settings_from_env(monkeypatch, tmp_path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": "k1", "name": "ops", "scopes": ["read", "delete"]}]))
    for k, v in {
        "REID_DATABASE_URL": "postgresql://db/gallery",
        "REID_API_KEYS": str(keys),
        "REID_STORE_ID": "store-7",
        "REID_RETENTION_DAYS": "14",
        "REID_RETENTION_PER_STORE": '{"store-9": 3}',
        "REID_BLUR_UNCONSENTED": "0",
        "REID_EVENT_LOGS": f"{tmp_path}/a.jsonl:{tmp_path}/b.jsonl",
    }.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env()
    assert s.database_url == "postgresql://db/gallery" and s.store_id == "store-7"
    assert [(k.name, sorted(k.scopes)) for k in s.api_keys] == [("ops", ["delete", "read"])]
    assert s.retention_days == 14 and s.retention_per_store == {"store-9": 3.0}
    assert s.blur_unconsented is False and s.event_logs == [f"{tmp_path}/a.jsonl", f"{tmp_path}/b.jsonl"]


def test_settings_defaults_keep_privacy_on(monkeypatch) -> None:
    for k in ("REID_BLUR_UNCONSENTED", "REID_RETENTION_DAYS", "REID_STORE_ID"):
        monkeypatch.delenv(k, raising=False)
    s = Settings.from_env()
    assert s.blur_unconsented is True and s.retention_days == 30 and s.follow_changes is True


@pytest.mark.parametrize(
    ("var", "value", "match"),
    [
        ("REID_RETENTION_PER_STORE", "[1, 2]", "REID_RETENTION_PER_STORE"),
        ("REID_RETENTION_PER_STORE", "{not json", "REID_RETENTION_PER_STORE"),
        ("REID_API_KEYS", '[{"key": "x", "scopes": ["root"]}]', r"REID_API_KEYS\[0\]"),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch, var: str, value: str, match: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=match):
        Settings.from_env()


SECRET = "s3cret-" + "k" * 40


@pytest.mark.parametrize(
    ("value", "match"),
    [
        # inline JSON longer than a file name may be (255 bytes) is read as JSON, not tried as a path
        (json.dumps([{"key": SECRET + str(i), "name": f"k{i}", "scopes": ["read"]} for i in range(8)]), None),
        (json.dumps({"key": SECRET, "name": "ops"}), "expected a JSON list of keys, got a JSON dict"),
        (json.dumps([SECRET]), r"REID_API_KEYS\[0\]: expected an object"),
        (json.dumps([{"key": SECRET, "scopes": "admin"}]), r"REID_API_KEYS\[0\]: 'scopes' must be a list"),
        (json.dumps([{"key": SECRET, "name": "a"}, {"key": SECRET + "2", "name": "a"}]), "used twice"),
        # the audit log records the name (100 characters): a longer one could never be audited
        (
            json.dumps([{"key": SECRET, "name": "n" * 101}]),
            r"REID_API_KEYS\[0\]: 'name' is 101 characters; at most 100",
        ),
        ("[" + SECRET, "not valid JSON"),
        ("x" * 300 + SECRET, "neither inline JSON"),  # too long for a file name: no OSError traceback
        ("/nonexistent/" + SECRET, "neither inline JSON"),
    ],
)
def test_api_keys_are_parsed_without_ever_showing_a_key(monkeypatch, value: str, match: str | None) -> None:
    monkeypatch.setenv("REID_API_KEYS", value)
    if match is None:
        assert [k.name for k in Settings.from_env().api_keys] == [f"k{i}" for i in range(8)]
        return
    with pytest.raises(ConfigError, match=match) as e:
        Settings.from_env()
    # no chained exception (whose traceback would print the value) either
    assert SECRET not in str(e.value) and e.value.__cause__ is None
    assert e.value.__context__ is None or e.value.__suppress_context__


def test_every_setting_is_read_from_the_environment_with_clear_errors(monkeypatch) -> None:
    for var, value in {
        "REID_MAX_JSON_DEPTH": "4",
        "REID_MAX_REQUEST_BYTES": "1000",
        "REID_PUBLIC_READINESS_DETAIL": "yes",
        "REID_BODY_THRESHOLD": "0.61",
        "REID_RETENTION_SWEEP_EVERY": "60",
        "REID_FOLLOW_CHANGES": "false",
        "REID_CHANGE_POLL_INTERVAL": "0.25",
        "REID_MIN_IMAGE_SIDE": "32",
        "REID_INDEX_DIR": "/srv/indexes",
    }.items():
        monkeypatch.setenv(var, value)
    s = Settings.from_env()
    assert (s.max_json_depth, s.max_request_bytes, s.public_readiness_detail) == (4, 1000, True)
    assert (s.body_threshold, s.retention_sweep_every, s.follow_changes) == (0.61, 60.0, False)
    assert (s.change_poll_interval, s.min_image_side, s.index_dir) == (0.25, 32, "/srv/indexes")
    assert Settings.from_env(follow_changes=True).follow_changes is True  # arguments win over the environment
    monkeypatch.setenv("REID_MAX_IMAGES_PER_REQUEST", "many")
    monkeypatch.setenv("REID_BODY_THRESHOLD", "high")
    with pytest.raises(
        ConfigError, match="REID_BODY_THRESHOLD: .*number.*; REID_MAX_IMAGES_PER_REQUEST: .*integer"
    ):
        Settings.from_env()
    monkeypatch.delenv("REID_BODY_THRESHOLD")
    monkeypatch.setenv("REID_MAX_IMAGES_PER_REQUEST", "0")
    with pytest.raises(ConfigError, match="REID_MAX_IMAGES_PER_REQUEST: Input should be greater than 0"):
        Settings.from_env()


def test_the_body_runtime_is_onnx_unless_set_and_one_function_builds_the_embedder(monkeypatch) -> None:
    """REID_BODY_RUNTIME / REID_ONNX_THREADS choose how the body model runs; `body_embedder` builds it for the
    API, the camera command and the worker (command options win over the environment)."""
    import os

    from services.settings import BodyModelSettings, body_embedder, body_settings

    for var in ("REID_BODY_RUNTIME", "REID_ONNX_THREADS", "REID_BODY_CHECKPOINT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings.from_env()
    assert s.body_runtime == "onnx" and s.onnx_threads == min(2, os.cpu_count() or 1)
    onnx = body_embedder(s)
    assert (onnx.runtime, onnx.threads) == ("onnx", s.onnx_threads)
    monkeypatch.setenv("REID_BODY_RUNTIME", "torch")
    monkeypatch.setenv("REID_ONNX_THREADS", "1")
    assert (Settings.from_env().body_runtime, Settings.from_env().onnx_threads) == ("torch", 1)
    torch_emb = body_embedder(body_settings(body_checkpoint=None))
    assert torch_emb.runtime == "torch" and torch_emb.model_id == onnx.model_id
    assert body_settings(body_runtime="onnx").body_runtime == "onnx"  # the command's option wins
    assert body_embedder(body_settings(body_runtime="onnx"), flip=True).model_id == onnx.model_id + "-flip"
    assert isinstance(body_settings(), BodyModelSettings) and body_settings().body_runtime == "torch"
    monkeypatch.setenv("REID_BODY_RUNTIME", "tensorrt")
    monkeypatch.setenv("REID_ONNX_THREADS", "0")
    with pytest.raises(
        ConfigError, match="REID_BODY_RUNTIME: Input should be 'onnx' or 'torch'.*REID_ONNX_THREADS"
    ):
        Settings.from_env()
    with pytest.raises(ConfigError, match="REID_BODY_RUNTIME"):
        body_settings()  # the camera command and worker read the same variables


def test_api_keys_are_held_hashed_and_every_key_is_compared(monkeypatch) -> None:
    """Issue 13 item 7: a lookup hashes the given key and compares it with every stored digest through
    hmac.compare_digest, so its time does not depend on which key matched or how many leading bytes agree."""
    import hmac

    import services.api.state as state_module
    from services.api.state import KeyRing

    keys = [ApiKey(f"{SECRET}-{i}", f"k{i}", frozenset({"read"})) for i in range(3)]
    ring = KeyRing(keys)
    assert all(SECRET not in repr(k) for _, k in ring._keys)  # only the digests are kept
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(state_module.hmac, "compare_digest", counting)
    for given, name in [(f"{SECRET}-0", "k0"), (f"{SECRET}-2", "k2"), (f"{SECRET}-9", None), ("", None)]:
        calls.clear()
        found = ring.find(given)
        assert (found.name if found else None) == name
        assert len(calls) == len(keys)  # no early exit on the first match
        assert all(len(a) == len(b) == 32 for a, b in calls)  # digests, never the keys themselves

"""Service settings from REID_* environment variables: values, defaults and clear errors."""

from __future__ import annotations

import json

import pytest

from reid.errors import ConfigError
from services.settings import Settings


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

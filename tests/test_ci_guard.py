"""Under CI=true a missing real component fails the run with its name; locally it is a skip with a reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

CASES = [
    (
        "tests/test_face.py::test_detect_and_align",
        {"REID_SHARED_DATA": "/nonexistent/shared/data"},
        "../shared/data",
    ),
    (
        "tests/test_gallery_privacy.py::test_change_feed_reaches_another_process_within_a_second",
        {"REID_TEST_POSTGRES_URL": ""},
        "PostgreSQL",
    ),
]


@pytest.mark.parametrize(("target", "env", "component"), CASES, ids=["shared-data", "postgresql"])
@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_component_fails_under_ci_and_skips_locally(target, env, component, ci) -> None:
    run_env = {**os.environ, **env, "CI": ci}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", target, "-k", "not sqlite"],
        cwd=REPO,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    if ci:
        assert out.returncode == 1 and f"{component} is missing under CI=true" in text, text[-2000:]
    else:
        assert out.returncode == 0 and "skipped" in text and "failed" not in text, text[-2000:]

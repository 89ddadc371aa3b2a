"""The web page end to end in headless Chromium (Debian's chromium, driven by Playwright): enroll with photos,
see the person with a thumbnail, identify a photo, delete."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.api import create_app
from services.settings import ApiKey, Settings
from tests.conftest import missing
from tests.servers import ColourEmbedder, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def chromium() -> None:
    if CHROMIUM is None:
        missing("Chromium", "Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture
def server(tmp_path: Path):
    from reid.face import DlibFaceEmbedder

    settings = Settings(
        database_url=str(tmp_path / "g.db"),
        api_keys=[ApiKey("k1", "admin", frozenset({"admin"}))],
        body_threshold=0.95,
    )
    with running(
        create_app(settings, embedders={"face": DlibFaceEmbedder(), "body": ColourEmbedder()})
    ) as url:
        yield url


def test_enroll_identify_delete_in_the_browser(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.fromarray(np.tile(np.array([210, 20, 20], np.uint8), (64, 32, 1))).save(red)
    Image.fromarray(np.tile(np.array([20, 20, 210], np.uint8), (64, 32, 1))).save(blue)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(server + "/")
        page.fill("#api-key", "k1")
        page.click("#save-key")
        expect(page.locator("#status")).to_have_text("0 people")
        page.fill("#enroll-name", "Red Shirt")
        page.set_input_files("#enroll-files", [str(red)])
        page.select_option("#enroll-modality", "body")
        page.click("#enroll-form button[type=submit]")
        expect(page.locator("#status")).to_contain_text("enrolled Red Shirt with 1 template")
        row = page.locator("#persons tbody tr").first
        expect(row.locator(".name")).to_have_text("Red Shirt")
        expect(row.locator("img.thumb")).to_have_attribute("src", re.compile(r"^blob:"))
        page.set_input_files("#identify-file", str(red))
        page.select_option("#identify-modality", "body")
        page.click("#identify-form button[type=submit]")
        expect(page.locator("#identify-result .known")).to_contain_text("Red Shirt")
        # the evidence: this server's body threshold is an operator setting on the raw score
        expect(page.locator("#identify-result .evidence")).to_have_text(
            re.compile(r"^score 1\.000 >= threshold 0\.\d{3} \(setting\)$")
        )
        page.set_input_files("#identify-file", str(blue))
        page.click("#identify-form button[type=submit]")
        expect(page.locator("#identify-result .unknown")).to_have_text("Nobody we know")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        with page.expect_download() as dl:  # subject access export, downloaded as a zip
            row.locator("button.export").click()
        saved = tmp_path / "export.zip"
        dl.value.save_as(saved)
        with zipfile.ZipFile(saved) as z:
            assert json.loads(z.read("person.json"))["person"]["display_name"] == "Red Shirt"
        expect(page.locator("#status")).to_contain_text("exported person")
        row.locator("button.delete").click()
        expect(page.locator("#status")).to_contain_text("deleted person")
        expect(page.locator("#persons tbody tr")).to_have_count(0)
        page.click("#show-audit")  # the audit log shows what was just done, newest first
        expect(page.locator("#audit tbody tr").first).to_contain_text("delete")
        expect(page.locator("#audit tbody")).to_contain_text("export")
        page.fill("#api-key", "wrong")
        page.click("#save-key")
        expect(page.locator("#status")).to_contain_text("401: unknown API key")
        browser.close()

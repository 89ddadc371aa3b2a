"""The web page end to end in headless Chromium (Debian's chromium, driven by Playwright): enroll with photos,
see the person with a thumbnail, identify a photo, delete."""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.api import create_app
from services.settings import ApiKey, Settings
from tests.conftest import REPO, missing
from tests.servers import ColourEmbedder, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the tests' screenshots of each view (for people to look at; nothing asserts on pixels)
SCREENSHOTS = Path(os.environ.get("REID_SCREENSHOTS", REPO / "outputs" / "screenshots"))
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def open_page(p, server: str):
    """A headless Debian Chromium page on ``server`` with the admin key entered; dialogs are accepted."""
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
    page = browser.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto(server + "/")
    page.fill("#api-key", "k1")
    page.click("#save-key")
    return browser, page


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
        browser, page = open_page(p, server)
        expect(page.locator("#status")).to_have_text("0 people")
        page.fill("#enroll-name", "Red Shirt")
        page.set_input_files("#enroll-files", [str(red)])
        page.select_option("#enroll-modality", "body")
        page.click("#enroll-form button[type=submit]")
        expect(page.locator("#status")).to_contain_text("enrolled Red Shirt with 1 template")
        row = page.locator("#persons tbody tr").filter(has_text="Red Shirt")
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
        # with a second person the raw rule's answer shows the runner-up too (not weighed, but evidence)
        page.fill("#enroll-name", "Blue Shirt")
        page.set_input_files("#enroll-files", [str(blue)])
        page.click("#enroll-form button[type=submit]")
        expect(page.locator("#status")).to_contain_text("enrolled Blue Shirt with 1 template")
        page.set_input_files("#identify-file", str(red))
        page.click("#identify-form button[type=submit]")
        expect(page.locator("#identify-result .evidence")).to_have_text(
            re.compile(r"^score 1\.000 >= threshold 0\.\d{3} \(setting\); runner-up 0\.\d{3}$")
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "people.png"), full_page=True)
        with page.expect_download() as dl:  # subject access export, downloaded as a zip
            row.locator("button.export").click()
        saved = tmp_path / "export.zip"
        dl.value.save_as(saved)
        with zipfile.ZipFile(saved) as z:
            assert json.loads(z.read("person.json"))["person"]["display_name"] == "Red Shirt"
        expect(page.locator("#status")).to_contain_text("exported person")
        row.locator("button.delete").click()
        expect(page.locator("#status")).to_contain_text("deleted person")
        expect(page.locator("#persons tbody tr")).to_have_count(1)
        expect(page.locator("#persons tbody tr .name")).to_have_text("Blue Shirt")
        page.click("#show-audit")  # the audit log shows what was just done, newest first
        expect(page.locator("#audit tbody tr").first).to_contain_text("delete")
        expect(page.locator("#audit tbody")).to_contain_text("export")
        page.screenshot(path=str(SCREENSHOTS / "audit-log.png"), full_page=True)
        page.fill("#api-key", "wrong")
        page.click("#save-key")
        expect(page.locator("#status")).to_contain_text("401: unknown API key")
        browser.close()


@pytest.mark.realdata
def test_identify_shows_the_photo_with_its_face_box_the_candidates_and_the_decision(
    server: str, lfw_root: Path
) -> None:
    """The operator sees what the answer was made from: the query photo with the face that was found, the
    closest persons with their thumbnails and scores (the accepted one marked), and the decision's numbers;
    and "not in the gallery" for a stranger."""
    import httpx
    from playwright.sync_api import expect, sync_playwright

    key = {"X-API-Key": "k1"}
    people = {
        "Aaron Peirsol": "Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
        "Abdullah Gul": "Abdullah_Gul/Abdullah_Gul_0001.jpg",
    }
    for name, photo in people.items():
        pid = httpx.post(f"{server}/persons", json={"display_name": name}, headers=key).json()["id"]
        r = httpx.post(f"{server}/persons/{pid}/enroll", headers=key,
                       files={"images": ("p.jpg", (lfw_root / photo).read_bytes(), "image/jpeg")}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server + "/")
        page.fill("#api-key", "k1")
        page.click("#save-key")
        expect(page.locator("#status")).to_have_text("2 people")
        page.set_input_files("#identify-file", str(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0003.jpg"))
        page.click("#identify-form button[type=submit]")
        expect(page.locator("#identify-result .known")).to_contain_text("Aaron Peirsol")
        expect(page.locator("#identify-result .evidence")).to_contain_text("runner-up")
        expect(page.locator("#identify-result .evidence")).to_contain_text(
            "(model card, for this gallery's size)"
        )
        box = page.locator("#identify-query .box")
        expect(box).to_be_visible()
        photo = page.locator("#identify-query img").bounding_box()
        face = box.bounding_box()
        # the face box lies inside the shown photo and covers a face-sized part of it (LFW: ~40% of the width)
        assert photo["x"] <= face["x"] and face["x"] + face["width"] <= photo["x"] + photo["width"] + 1
        assert 0.2 < face["width"] / photo["width"] < 0.8
        items = page.locator("#identify-candidates li")
        expect(items).to_have_count(2)
        expect(items.first).to_have_class("accepted")
        expect(items.first.locator(".name")).to_have_text("Aaron Peirsol")
        expect(items.nth(1)).not_to_have_class("accepted")
        expect(items.first.locator("img.thumb")).to_have_attribute("src", re.compile(r"^blob:"))
        scores = [float(t.split()[1]) for t in items.locator(".score").all_inner_texts()]
        assert scores == sorted(scores, reverse=True)
        page.screenshot(path=str(SCREENSHOTS / "identify-known.png"), full_page=True)
        stranger = next((lfw_root / "Aaron_Eckhart").glob("*.jpg"))  # never enrolled
        page.set_input_files("#identify-file", str(stranger))
        page.click("#identify-form button[type=submit]")
        expect(page.locator("#identify-result .unknown")).to_have_text("Nobody we know")
        expect(page.locator("#identify-result .absent")).to_have_text("(not in the gallery)")
        expect(page.locator("#identify-candidates li.accepted")).to_have_count(0)
        page.screenshot(path=str(SCREENSHOTS / "identify-stranger.png"), full_page=True)
        assert not [e for e in errors if "Content Security Policy" in e], (
            errors
        )  # the page runs under its CSP
        browser.close()


@pytest.mark.realdata
def test_review_queue_confirm_merges_and_reject_keeps_apart(server: str, lfw_root: Path) -> None:
    """Near misses on real faces: a second photo of an enrolled person, asked through identify-or-enroll,
    scores just under the card's threshold and becomes a new person: the pair is queued. "Same person" merges
    them and the identify answer changes to the enrolled name; "Different people" keeps them apart and the
    pair does not come back."""
    import httpx
    from playwright.sync_api import expect, sync_playwright

    key = {"X-API-Key": "k1"}
    enrolled = {}
    for name in ("Adam_Scott", "Aitor_Gonzalez", "Aaron_Peirsol", "Abdullah_Gul"):
        pid = httpx.post(
            f"{server}/persons", json={"display_name": name.replace("_", " ")}, headers=key
        ).json()["id"]
        photo = (lfw_root / name / f"{name}_0001.jpg").read_bytes()
        r = httpx.post(
            f"{server}/persons/{pid}/enroll", headers=key, files={"images": ("p.jpg", photo)}, timeout=60
        )
        assert r.status_code == 200, r.text
        enrolled[name] = pid

    def identify_or_enroll(name: str) -> dict:
        photo = (lfw_root / name / f"{name}_0002.jpg").read_bytes()
        r = httpx.post(
            f"{server}/identify-or-enroll", headers=key, files={"image": ("q.jpg", photo)}, timeout=60
        )
        assert r.status_code == 200, r.text
        return r.json()

    new = {}
    for name in ("Adam_Scott", "Aitor_Gonzalez"):
        r = identify_or_enroll(name)
        # a near miss: a new person, the enrolled one just under the threshold
        assert (
            r["created"]
            and r["decision"]["threshold"] - 0.05 <= r["normalised_score"] < r["decision"]["threshold"]
        )
        new[name] = r["person_id"]
    pairs = httpx.get(f"{server}/review", headers=key).json()
    assert {(p["person_id"], p["candidate_id"]) for p in pairs} == {(new[n], enrolled[n]) for n in new}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser, page = open_page(p, server)
        items = page.locator("#reviews li")
        expect(items).to_have_count(2)
        expect(page.locator("#review-counts")).to_have_text("2 to judge; 0 confirmed (merged), 0 rejected")
        expect(items.first.locator("img.thumb")).to_have_count(2)
        expect(items.first.locator("img.candidate")).to_have_attribute("src", re.compile(r"^blob:"))
        page.screenshot(path=str(SCREENSHOTS / "review-queue.png"), full_page=True)

        def ask(name: str):
            page.set_input_files("#identify-file", str(lfw_root / name / f"{name}_0002.jpg"))
            page.click("#identify-form button[type=submit]")
            return page.locator("#identify-result .known .who")

        expect(ask("Adam_Scott")).to_have_text(f"person {new['Adam_Scott']}")  # the anonymous new person
        adam = next(p["id"] for p in pairs if p["person_id"] == new["Adam_Scott"])
        page.locator(f"#reviews li[data-review-id='{adam}'] .confirm").click()
        expect(page.locator("#status")).to_have_text(
            f"merged person {new['Adam_Scott']} into person {enrolled['Adam_Scott']}"
        )
        expect(ask("Adam_Scott")).to_have_text("Adam Scott")  # the answer changed
        aitor = next(p["id"] for p in pairs if p["person_id"] == new["Aitor_Gonzalez"])
        page.locator(f"#reviews li[data-review-id='{aitor}'] .reject").click()
        expect(page.locator("#status")).to_have_text(
            f"kept person {new['Aitor_Gonzalez']} and person {enrolled['Aitor_Gonzalez']} apart"
        )
        expect(items).to_have_count(0)
        expect(page.locator("#review-counts")).to_have_text(
            "0 to judge; 1 confirmed (merged), 1 rejected; the system was right to keep them apart in 50%"
        )
        expect(ask("Aitor_Gonzalez")).to_have_text(f"person {new['Aitor_Gonzalez']}")  # still apart
        page.screenshot(path=str(SCREENSHOTS / "review-decided.png"), full_page=True)
        assert (
            identify_or_enroll("Aitor_Gonzalez")["created"] is False
        )  # named now: no new person, no new pair
        page.click("#load-review")
        expect(page.locator("#review-counts")).to_contain_text("0 to judge")
        expect(items).to_have_count(0)
        browser.close()
    audit = httpx.get(f"{server}/audit", headers=key).json()
    assert {a["action"] for a in audit} >= {"review-confirm", "review-reject"}
    # merged: the new person is gone into the enrolled one; rejected: both stay, and the pair stays closed
    assert httpx.get(f"{server}/persons/{new['Adam_Scott']}", headers=key).status_code == 404
    for pid in (new["Aitor_Gonzalez"], enrolled["Aitor_Gonzalez"]):
        assert httpx.get(f"{server}/persons/{pid}", headers=key).status_code == 200
    assert [r["id"] for r in httpx.get(f"{server}/review?status=rejected", headers=key).json()] == [aitor]
    assert httpx.get(f"{server}/review", headers=key).json() == []


@pytest.mark.realdata
def test_camera_tiles_and_live_sightings_from_the_camera_command(
    tmp_path: Path, camera_feeds_root: Path
) -> None:
    """The lab videos through the camera command into the page's gallery: one tile per camera with its latest
    annotated frame and frames/s, and each sighting appears in the live list as the camera writes it."""
    import subprocess
    import sys

    from playwright.sync_api import expect, sync_playwright

    from reid.face import DlibFaceEmbedder

    db, status_dir = tmp_path / "g.db", tmp_path / "status"
    settings = Settings(
        database_url=str(db),
        api_keys=[ApiKey("k1", "admin", frozenset({"admin"}))],
        camera_status_dir=str(status_dir),
        change_poll_interval=0.2,
    )
    app = create_app(settings, embedders={"face": DlibFaceEmbedder(), "body": ColourEmbedder()})
    lab = camera_feeds_root / "lab"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running(app) as server, sync_playwright() as p:
        browser, page = open_page(p, server)
        expect(page.locator("#cameras")).to_contain_text("no camera has reported")
        camera = subprocess.Popen(
            [sys.executable, "-m", "services.camera", "--db", str(db), "--every", "3", "--status-dir", str(status_dir),
             "--video", f"{lab / 'Single1.mp4'}:cam1", "--video", f"{lab / 'Double1.mp4'}:cam2",
             "--events", str(tmp_path / "events.jsonl")],
            cwd=REPO, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            tile = page.locator(".tile[data-camera-id='cam1']")
            expect(tile.locator("img")).to_have_attribute("src", re.compile(r"^blob:"), timeout=60_000)
            expect(tile.locator("figcaption")).to_contain_text("frames/s")
            expect(page.locator("#live-sightings li").first).to_contain_text("cam1: person", timeout=60_000)
            _, err = camera.communicate(timeout=240)
            assert camera.returncode == 0, err[-2000:]
        finally:
            if camera.poll() is None:
                camera.kill()
        events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
        lines = page.locator("#live-sightings li")
        expect(lines).to_have_count(len(events), timeout=10_000)  # every sighting, once
        expect(lines.first).to_contain_text("cam2: person")  # newest first
        for cam in ("cam1", "cam2"):
            caption = page.locator(f".tile[data-camera-id='{cam}'] figcaption")
            expect(caption).to_contain_text(
                re.compile(rf"^{cam}: stopped, [1-9][0-9.]* frames/s, in view: nobody$")
            )
        page.screenshot(path=str(SCREENSHOTS / "cameras.png"), full_page=True)
        # the person page of the man cam1 saw: his sightings as a timeline per camera, his body templates
        man = next(e["global_id"] for e in events if e["camera_id"] == "cam1")
        page.click("#refresh")
        page.locator(f"#persons tr[data-person-id='{man}'] .open-person").click()
        expect(page.locator("#person-panel")).to_be_visible()
        expect(page.locator("#person-sightings")).to_contain_text("cam1")
        expect(page.locator("#person-sightings .camera span").first).to_be_visible()
        expect(page.locator("#person-templates .templates[data-modality='body']")).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / "person-timeline.png"), full_page=True)
        browser.close()


@pytest.mark.realdata
def test_person_page_templates_consent_merge_and_erase(server: str, lfw_root: Path) -> None:
    """A person's page: the crops each template was made from (blurred: no consent yet), consent and purpose
    edited and kept, another person merged in (their templates join), then erased."""
    import httpx
    from playwright.sync_api import expect, sync_playwright

    key = {"X-API-Key": "k1"}
    photos = [lfw_root / "Al_Pacino" / f"Al_Pacino_000{i}.jpg" for i in (1, 2, 3)]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser, page = open_page(p, server)
        page.fill("#enroll-name", "Al Pacino")
        page.set_input_files("#enroll-files", [str(f) for f in photos[:2]])
        page.click("#enroll-form button[type=submit]")
        expect(page.locator("#status")).to_contain_text("enrolled Al Pacino with 2 template")
        other = httpx.post(f"{server}/persons", json={"display_name": "second record"}, headers=key).json()[
            "id"
        ]
        r = httpx.post(f"{server}/persons/{other}/enroll", headers=key,
                       files={"images": ("p3.jpg", photos[2].read_bytes())}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        page.click("#refresh")
        page.locator("#persons tbody tr", has_text="Al Pacino").locator(".open-person").click()
        panel = page.locator("#person-panel")
        expect(panel).to_be_visible()
        expect(page.locator("#person-title")).to_contain_text("Al Pacino")
        crops = panel.locator(".templates[data-modality='face'] img.template")
        expect(crops).to_have_count(2)
        expect(crops.first).to_have_attribute("src", re.compile(r"^blob:"))
        page.fill("#person-purpose", "staff")
        page.fill("#person-consent", '{"signed": "2026-11-29", "scope": "store access"}')
        page.click("#person-form button[type=submit]")
        expect(page.locator("#status")).to_contain_text("saved person")
        pid = int(page.locator("#person-title").inner_text().split("id ")[1].split(",")[0])
        record = httpx.get(f"{server}/persons/{pid}/record", headers=key).json()
        assert record["purpose"] == "staff" and record["consent"] == {
            "signed": "2026-11-29",
            "scope": "store access",
        }
        page.fill("#person-consent", "{not json")
        page.click("#person-form button[type=submit]")
        expect(page.locator("#status")).to_contain_text("consent: not valid JSON")
        page.fill("#merge-other", str(other))
        page.click("#merge-form button[type=submit]")
        expect(page.locator("#status")).to_have_text(f"merged person {other} into person {pid}")
        expect(crops).to_have_count(3)  # the merged person's template joined, with its crop
        expect(crops.nth(2)).to_have_attribute("src", re.compile(r"^blob:"))
        page.screenshot(path=str(SCREENSHOTS / "person-page.png"), full_page=True)
        page.click("#person-erase")
        expect(page.locator("#status")).to_contain_text(f"deleted person {pid}")
        expect(panel).to_be_hidden()
        assert httpx.get(f"{server}/persons/{pid}", headers=key).status_code == 404
        assert httpx.get(f"{server}/persons/{pid}/templates", headers=key).status_code == 404
        browser.close()


def tab_to(page, selector: str, limit: int = 100) -> None:
    """Press Tab until the focused element matches ``selector`` (the page used from the keyboard only)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => !!document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{limit} presses of Tab never reached {selector}")


def test_review_and_person_page_from_the_keyboard(server: str) -> None:
    """Issue 15 part 5: the key entered, a near miss confirmed and another rejected, a person opened and closed,
    with Tab and Enter only (body colours near the 0.95 setting: 60% of the colour scores ~0.946)."""
    import httpx
    from playwright.sync_api import expect, sync_playwright

    from tests.test_review_api import photo

    key = {"X-API-Key": "k1"}
    red, blue = (200, 30, 30), (30, 30, 200)
    known, new = {}, {}
    for name, rgb, other in (("Red", red, (100, 30, 30)), ("Blue", blue, (30, 30, 100))):
        pid = httpx.post(f"{server}/persons", json={"display_name": name}, headers=key).json()["id"]
        r = httpx.post(f"{server}/persons/{pid}/enroll", headers=key, data={"modality": "body"},
                       files={"images": ("p.png", photo(rgb))})  # fmt: skip
        assert r.status_code == 200, r.text
        known[name] = pid
        r = httpx.post(f"{server}/identify-or-enroll", headers=key, data={"modality": "body"},
                       files={"image": ("q.png", photo(rgb, other, 0.6))}).json()  # fmt: skip
        t = r["decision"]["threshold"]
        assert r["created"] and t - 0.05 <= r["normalised_score"] < t, r
        new[name] = r["person_id"]
    pairs = httpx.get(f"{server}/review", headers=key).json()
    pair = {name: next(r["id"] for r in pairs if r["candidate_id"] == pid) for name, pid in known.items()}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(server + "/")
        tab_to(page, "#api-key")
        page.keyboard.type("k1")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")  # "Use key"
        expect(page.locator("#reviews li")).to_have_count(2)
        tab_to(page, f"#reviews li[data-review-id='{pair['Red']}'] .confirm")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(f"merged person {new['Red']} into person {known['Red']}")
        expect(page.locator("#reviews li")).to_have_count(1)
        page.locator("#load-review").focus()  # the list was rebuilt: start again from its Refresh button
        tab_to(page, f"#reviews li[data-review-id='{pair['Blue']}'] .reject")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(
            f"kept person {new['Blue']} and person {known['Blue']} apart"
        )
        expect(page.locator("#review-counts")).to_contain_text("1 confirmed (merged), 1 rejected")
        row = f"#persons tr[data-person-id='{known['Blue']}'] .open-person"
        page.locator("#refresh").focus()
        tab_to(page, row)
        page.keyboard.press("Enter")
        expect(page.locator("#person-panel")).to_be_visible()
        expect(page.locator("#person-panel h2")).to_be_focused()  # the panel opened where Tab goes on
        page.keyboard.press("Tab")
        expect(page.locator("#person-close")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#person-panel")).to_be_hidden()
        expect(page.locator(row)).to_be_focused()  # back on the person's row
        browser.close()

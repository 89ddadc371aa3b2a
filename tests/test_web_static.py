"""The web page without a browser (issue 15 part 5): plain files served by the API under a strict
Content-Security-Policy, nothing in them the policy would block, and every control reachable and named for
the keyboard. What the page does is tested in Chromium (test_web.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx

from services.api import create_app
from services.api.app import CSP, WEB
from services.settings import ApiKey, Settings
from tests.servers import ColourEmbedder, running

CONTROLS = {"input", "select", "textarea", "button", "a"}


class Controls(HTMLParser):
    """The page's controls with their attributes, whether a <label> wraps them, and the text inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict] = []
        self.labelled_ids: set[str] = set()
        self.inline: list[str] = []  # what a strict CSP blocks: inline scripts and styles, on* handlers
        self._open: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.inline += [f"<{tag} {k}>" for k in a if k.startswith("on") or k == "style"]
        if tag == "style" or (tag == "script" and "src" not in a):
            self.inline.append(f"<{tag}>")
        if tag == "label" and "for" in a:
            self.labelled_ids.add(a["for"])
        if tag in CONTROLS:
            in_label = any(t == "label" for t, _ in self._open)
            self.found.append({"tag": tag, "attrs": a, "in_label": in_label, "text": ""})
        if tag not in {"input", "img", "meta", "link", "br"}:
            self._open.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for c in self.found:
            if c["tag"] in {"button", "a"} and any(t == c["tag"] for t, _ in self._open[-1:]):
                c["text"] += data.strip()


def test_every_control_has_a_name_and_a_place_in_the_tab_order() -> None:
    page = Controls()
    page.feed((WEB / "index.html").read_text())
    assert len(page.found) > 20
    for c in page.found:
        a = c["attrs"]
        named = c["in_label"] or a.get("aria-label") or a.get("id") in page.labelled_ids or c["text"]
        assert named, f"<{c['tag']} {a}> has no name a keyboard or screen-reader user would hear"
        assert int(a.get("tabindex", "0")) <= 0, f"<{c['tag']} {a}> jumps the tab order"
        assert c["tag"] != "a" or "href" in a, f"<a {a}> without href is not reachable by Tab"
    assert page.inline == [], page.inline
    # focus stays visible: nothing takes the browser's focus ring away
    assert not re.search(r"outline\s*:\s*(none|0)\b", (WEB / "style.css").read_text())


def test_the_scripts_markup_has_nothing_the_policy_blocks() -> None:
    """app.js builds rows and tiles from HTML strings: no inline handlers or style attributes in them (the CSP
    would block them silently), no eval; handlers are assigned as properties."""
    js = (WEB / "app.js").read_text()
    assert not re.search(r"<[a-z][^>]*\s(on[a-z]+|style)\s*=", js), "inline handler or style in app.js markup"
    assert not re.search(r"\b(eval|new Function)\s*\(", js)
    assert not re.search(r"setTimeout\(\s*[\"'`]", js)
    # buttons the script creates carry their own text
    assert all(b.strip() for b in re.findall(r"<button[^>]*>([^<]*)</button>", js))


def test_the_page_and_its_files_are_served_under_the_strict_policy(tmp_path: Path) -> None:
    settings = Settings(
        database_url=str(tmp_path / "g.db"),
        api_keys=[ApiKey("k1", "admin", frozenset({"admin"}))],
        retention_sweep_every=None,
    )
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in CSP and "*" not in CSP and "http" not in CSP
    with running(create_app(settings, embedders={"body": ColourEmbedder()})) as url:
        r = httpx.get(f"{url}/")
        assert r.status_code in (302, 307) and r.headers["location"] == "/ui/index.html"
        assert r.headers["content-security-policy"] == CSP
        for name, kind in (("index.html", "text/html"), ("app.js", "javascript"), ("style.css", "text/css")):
            r = httpx.get(f"{url}/ui/{name}")  # no key needed for the files themselves
            assert r.status_code == 200 and kind in r.headers["content-type"], (name, r.status_code)
            assert r.headers["content-security-policy"] == CSP
            assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert "content-security-policy" not in httpx.get(f"{url}/health").headers  # JSON, not a page

"""The dashboard's files without a browser: their weight, the headers /ui is served with, and no markup
or code paths that a strict CSP would refuse or that would parse user strings as HTML."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from service.main import create_app
from service.routes.ui import UI_DIR

BUDGET_BYTES = 200 * 1024  # JS and CSS together, before gzip (issue 16)
CODE = sorted(p for p in UI_DIR.rglob("*") if p.suffix in (".js", ".css"))
OWN_JS = [p for p in CODE if p.suffix == ".js" and "vendor" not in p.parts]


@pytest.fixture(scope="module")
def ui_client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        yield client


def test_js_and_css_weigh_under_200_kb() -> None:
    total = sum(p.stat().st_size for p in CODE)
    assert OWN_JS and any("vendor" in p.parts for p in CODE)
    assert total < BUDGET_BYTES, f"{total} bytes of JS and CSS: {[(p.name, p.stat().st_size) for p in CODE]}"


def test_every_file_is_served_with_the_strict_policy(ui_client: TestClient) -> None:
    for path in ["", *(str(p.relative_to(UI_DIR)) for p in UI_DIR.rglob("*") if p.is_file())]:
        response = ui_client.get(f"/ui/{path}")
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert ui_client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert ui_client.get("/ui", follow_redirects=False).status_code in (307, 308)
    assert ui_client.get("/ui/../service/main.py").status_code == 404


def test_no_inline_script_style_or_handlers_in_the_page() -> None:
    page = (UI_DIR / "index.html").read_text()
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", page)), "inline <script>"
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", page)


def test_own_code_never_parses_strings_as_html() -> None:
    for path in OWN_JS:
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{path.name} uses {sink}"

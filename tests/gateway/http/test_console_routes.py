"""``/console`` in-process: the shell and its assets are served to anyone (they hold no data)
with a strict Content-Security-Policy and ``nosniff``; the shell loads only same-origin files
and holds no inline script or style; unknown names are OpenAI-shaped 404s; the data the
console shows still needs the admin key."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.console.assets import MEDIA_TYPES
from gateway.http.app import create_app
from gateway.http.auth import hash_key
from gateway.settings import Settings
from tests.conftest import REPO, ServerProcess, upstream_model

CLIENT, ADMIN = "tg-client-key", "tg-admin-key"
STATIC = REPO / "gateway" / "console" / "static"


@pytest.fixture
async def client(upstream: ServerProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings.model_validate({
        "models": {"echo": upstream_model(upstream, "echo")},
        "records": {"sink": "none"}, "telemetry": {"tracing": False},
        "canary": {"dir": str(tmp_path / "canary")},
        "auth": {"api_keys": [{"id": "team-a", "sha256": hash_key(CLIENT)}],
                 "admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]}}))
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        yield http


def assert_locked_down(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for source in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[source] == "'self'"  # no inline, no eval, no other origin
    assert directives["frame-ancestors"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/console", "/console/"])
async def test_the_shell_needs_no_key_and_is_locked_down(client: httpx.AsyncClient,
                                                         path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert_locked_down(response)
    html = response.text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="/console/console.js" defer', "")]  # one file, nothing inline
    assert "<style" not in html and " style=" not in html
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/console/"), url  # no CDN, no other origin


async def test_every_asset_is_served_with_its_type(client: httpx.AsyncClient) -> None:
    for name, media_type in MEDIA_TYPES.items():
        response = await client.get(f"/console/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type.decode()
        assert response.content == (STATIC / name).read_bytes()
        assert_locked_down(response)


@pytest.mark.parametrize("name", ["nothing.js", "..%2Fconsole%2F__init__.py", "build.mjs",
                                  "%2e%2e"])
async def test_anything_else_is_an_openai_404(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/console/{name}")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_the_data_needs_the_admin_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin/registry")).status_code == 401
    assert (await client.get("/admin/registry", headers={
        "authorization": f"Bearer {CLIENT}"})).status_code == 401
    answer = await client.get("/admin/registry", headers={"authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200


def test_the_bundle_reaches_no_other_origin() -> None:
    """No URL in the script or the style sheet but the SVG namespace (a name, never fetched):
    no CDN, no font, no beacon; requests go to relative /admin paths only."""
    script = (STATIC / "console.js").read_text()
    style = (STATIC / "console.css").read_text()
    assert set(re.findall(r"https?://[^\"' )]+", script + style)) == {
        "http://www.w3.org/2000/svg"}
    assert "url(" not in style and "@import" not in style
    assert "/admin/" in script and "eval(" not in script and "innerHTML" not in script

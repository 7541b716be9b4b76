"""The web console (docs/console.md), served at ``/console``: the HTML shell at ``/console``
(and ``/console/``), its script, style sheet and icon at ``/console/<name>``.

The assets are public: they hold no data. The console asks the admin API (``/admin/...``) for
everything it shows, with the admin key its login form keeps in the tab's ``sessionStorage``.
Every answer carries a strict Content-Security-Policy (scripts, styles, images and requests from
this origin only, no inline script or style, no framing) and ``nosniff``.
"""

from __future__ import annotations

from gateway.console.assets import read_asset
from gateway.http.exchange import Call, Reply
from gateway.http.frontdoor import Endpoint
from gateway.kernel.errors import NotFoundError

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
"""On every console answer. ``no-cache``: a browser revalidates, so an upgraded gateway's
console is never mixed with an older cached script."""


def _serve(name: str) -> Reply:
    asset = read_asset(name)
    if asset is None:
        raise NotFoundError(f"No console asset {name[:100]!r}")
    return Reply(asset.body, headers=dict(HEADERS), media_type=asset.media_type)


async def shell(call: Call) -> Reply:
    return _serve("index.html")


async def asset(call: Call) -> Reply:
    return _serve(call.path_params["name"])


ENDPOINTS = [
    Endpoint("/console", "GET", shell, access="public"),
    Endpoint("/console/", "GET", shell, access="public"),
    Endpoint("/console/{name}", "GET", asset, access="public"),
]

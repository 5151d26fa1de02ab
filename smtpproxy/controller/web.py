"""The web interface's files: ``/`` (index.html) and ``/static/<name>``.

One page, plain JavaScript, no build step and nothing from another site:
the files live in the package (``controller/static/``, listed in
pyproject.toml's package-data) and are read once, at the first request.
They need no password (they hold nothing secret); the page then asks the
API with the ``Password`` header as rspamd's web interface does.

Every answer carries a Content-Security-Policy of ``default-src 'self'``
without inline scripts or styles, so a subject or symbol option shown by
the page can never run as code even if the page had a bug (it writes
message text with textContent only), and ``frame-ancestors 'none'`` so no
other site can frame the page to click its buttons.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_cache: dict[str, bytes] = {}


def _read(name: str) -> bytes:
    if name not in _cache:
        _cache[name] = resources.files("smtpproxy.controller").joinpath("static", name).read_bytes()
    return _cache[name]


def _answer(name: str) -> web.Response:
    response = web.Response(body=_read(name), content_type=FILES[name], charset="utf-8")
    response.headers.update({
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    })
    return response


async def index(request: web.Request) -> web.Response:
    return _answer("index.html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _answer(name)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)

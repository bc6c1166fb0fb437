"""Fixtures of the browser tests: the browser image, and a loopback test site."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import loopback_server

BROWSER_IMAGE = "legion-browser:latest"


@pytest.fixture(scope="session")
def browser_image() -> str:
    """The browser image for this source: `legion-browser:latest` when it is current (CI
    builds it first), else a tag named after the source digest, built once when missing
    (other checkouts on the same engine never retag it)."""
    import docker

    from legion.fleet.browser_image import (
        browser_image_is_current,
        browser_source_digest,
        build_browser_image,
    )
    from legion.fleet.images import image_exists

    own = f"legion-browser:src-{browser_source_digest()}"
    client = docker.from_env()
    try:
        if browser_image_is_current(client, BROWSER_IMAGE):
            return BROWSER_IMAGE
        if image_exists(client, own):
            return own
    finally:
        client.close()
    build_browser_image(
        tag=own,
        base=None,
        mirror=None,
        uid=10001,
        cache=Path(tempfile.gettempdir()) / "legion-test-wheels",
        progress=lambda line: print(line, file=sys.stderr),
    )
    return own


FORM = """<!doctype html><html><head><title>Order form</title></head><body>
<h1>Order</h1>
<form method="post" action="/submit">
<label>Name <input name="name"></label>
<label>Password <input type="password" name="pw"></label>
<select name="color" aria-label="Color"><option value="r">red</option>
<option value="b">blue</option></select>
<button type="submit">Send</button>
</form>
<a href="/next">Next page</a>
</body></html>"""


class Site(BaseHTTPRequestHandler):
    """The loopback test site; what it received is in `self.server.seen` (thread-safe list)."""

    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _page(
        self, title: str, body: str, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        head = f"<!doctype html><html><head><title>{title}</title></head>"
        data = f"{head}<body>{body}</body></html>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        with self.server.lock:
            self.server.seen.append(("GET", self.path, self.headers.get("Cookie", "")))
        if split.path == "/":
            data = FORM.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif split.path == "/next":
            self._page("Second page", "<p>You reached the second page.</p>")
        elif split.path == "/setcookie":
            self._page(
                "Cookie set",
                "<p>set</p>",
                headers={"Set-Cookie": f"who={query.get('v', 'x')}; Path=/; Max-Age=3600"},
            )
        elif split.path == "/showcookie":
            self._page("Cookies", f"<p id=c>cookie=[{self.headers.get('Cookie', '')}]</p>")
        elif split.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.get("to", "/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif split.path == "/jsredirect":
            target = json.dumps(query.get("to", "/"))
            self._page("Moving", f"<p>moving</p><script>location.href = {target};</script>")
        elif split.path == "/login":
            self._page(
                "Login",
                '<form method="post" action="/submit"><label>Secret <input name="name"></label>'
                '<button type="submit">Log in</button></form>',
            )
        else:
            self._page("Not found", "<p>no such page</p>", status=404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode()
        fields = {k: v[0] for k, v in parse_qs(body).items()}
        with self.server.lock:
            self.server.seen.append(("POST", self.path, body))
        self._page(
            "Thanks",
            f"<p id=done>Thanks {fields.get('name', '?')}, "
            f"you chose {fields.get('color', '?')}.</p>",
        )


@pytest.fixture
def site() -> Iterator[ThreadingHTTPServer]:
    with loopback_server(Site) as server:
        server.seen = []  # type: ignore[attr-defined]
        server.lock = threading.Lock()  # type: ignore[attr-defined]
        yield server

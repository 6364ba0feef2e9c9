"""The A/B page's web server (the standard library's threading HTTP server): the page, the next
pair for an annotator, and votes. It binds to 127.0.0.1 unless told otherwise, sends answers only
as JSON that the page writes as text, forbids scripts from anywhere but itself (Content-Security-
Policy), and accepts a vote only as JSON from its own origin, for a pair it issued to that
annotator, once."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from posttrain.ab.store import VoteRefused, VoteStore

logger = logging.getLogger(__name__)
MAX_BODY = 4096
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/ab.js": ("ab.js", "text/javascript; charset=utf-8"),
          "/ab.css": ("ab.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def make_server(store: VoteStore, models: tuple[str, str], host: str = "127.0.0.1", port: int = 8765):
    """A server for votes between two models (names as the store knows them); port 0 picks a free one."""
    page = {path: (resources.files("posttrain.ab").joinpath("page", name).read_bytes(), kind)
            for path, (name, kind) in ASSETS.items()}

    class Handler(BaseHTTPRequestHandler):
        server_version = "posttrain-ab"
        sys_version = ""

        def log_message(self, fmt, *args):       # one line per request in the server's log, not stderr
            logger.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: dict) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path in page:
                self._send(HTTPStatus.OK, *page[url.path])
            elif url.path == "/api/next":
                annotator = parse_qs(url.query).get("annotator", [""])[0]
                try:
                    pair = store.issue(annotator, models)
                except VoteRefused as err:
                    return self._json(err.status, {"error": str(err)})
                self._json(HTTPStatus.OK, pair or {"done": True})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"})

        def do_POST(self):
            if urlsplit(self.path).path != "/api/vote":
                return self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"})
            origin = self.headers.get("Origin")
            if origin is not None and origin != f"http://{self.headers.get('Host')}":
                return self._json(HTTPStatus.FORBIDDEN, {"error": "votes come from the A/B page itself"})
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "a vote is JSON"})
            try:
                length = int(self.headers.get("Content-Length") or -1)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": f"a vote is 1 to {MAX_BODY} bytes"})
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                store.vote(body.get("token"), body.get("annotator"), body.get("choice"))
            except (ValueError, UnicodeDecodeError) as err:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": f"malformed vote: {err}"})
            except VoteRefused as err:
                return self._json(err.status, {"error": str(err)})
            self._json(HTTPStatus.OK, {"counted": True})

    return ThreadingHTTPServer((host, port), Handler)

"""A Hugging Face hub on loopback that serves dataset repositories' files, for tests that
must go through ``huggingface_hub`` without the internet.

It answers what ``HfApi().dataset_info`` and ``hf_hub_download`` ask (the repository's
revision and its files by name); anything else is a 404 the hub library turns into an error.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REVISION = "0123456789abcdef0123456789abcdef01234567"
_INFO = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+|[^/]+)(/revision/[^/]+)?$")
_FILE = re.compile(r"^/datasets/(?P<repo>.+?)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


def _handler(repos: dict[str, dict[str, str]], asked: list[str]) -> type[BaseHTTPRequestHandler]:
    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _missing(self, code: str) -> None:
            self._answer(404, b"{}", {"X-Error-Code": code, "Content-Type": "application/json"})

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            asked.append(f"{self.command} {path}")
            info = _INFO.match(path)
            if info:
                repo = info.group("repo")
                if repo not in repos:
                    return self._missing("RepoNotFound")
                body = json.dumps({"id": repo, "sha": REVISION, "siblings": []}).encode()
                return self._answer(200, body, {"Content-Type": "application/json"})
            found = _FILE.match(path)
            if found and found.group("repo") in repos:
                text = repos[found.group("repo")].get(found.group("file"))
                if text is None:
                    return self._missing("EntryNotFound")
                body = text.encode()
                etag = hashlib.sha1(body).hexdigest()
                return self._answer(200, body, {"X-Repo-Commit": REVISION, "ETag": f'"{etag}"'})
            return self._missing("RepoNotFound")

        do_HEAD = do_GET

    return Hub


@contextmanager
def fake_hub(repos: dict[str, dict[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``repos`` ({repo id: {file name: text}}); yields (endpoint, requests seen)."""
    asked: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repos, asked))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

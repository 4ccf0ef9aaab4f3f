"""A loopback fake of the Hugging Face Hub's write API, for testing upload code offline.

It serves, on 127.0.0.1 and an OS-chosen port, the endpoints ``huggingface_hub`` calls
for ``create_repo`` and ``upload_folder``/``upload_file``/``create_commit``:

- ``POST /api/repos/create``
- ``POST /api/{type}s/{repo_id}/preupload/{revision}``: every file is answered
  ``uploadMode: regular``, so contents travel inline in the commit (no LFS, no xet).
- ``POST /api/{type}s/{repo_id}/commit/{revision}``: the NDJSON commit; files are stored.
- ``GET /api/{type}s/{repo_id}[/revision/{rev}]``: minimal repo info.

Everything the client sends is kept in memory: ``hub.files(repo_id)`` returns the
committed bytes so a test can compare them with what it uploaded. Requests to any
other route answer 404 and are recorded in ``hub.unhandled``.

While the server runs, ``huggingface_hub``'s offline mode is lifted (the test suite runs
with ``HF_HUB_OFFLINE=1``): the only server there is to reach is this loopback one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_REPO = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    """In-memory Hub on the loopback interface. Use as a context manager."""

    token = "hf_fake_token_for_tests"

    def __init__(self) -> None:
        self._repos: dict[str, dict[str, bytes]] = {}
        self._commits: dict[str, list[str]] = {}
        self.unhandled: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._saved_offline: tuple[bool, str | None] | None = None

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _reply(self, code: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_POST(self) -> None:
                code, payload = hub._post(self.path.split("?")[0], self._body(), self.headers)
                self._reply(code, payload)

            def do_GET(self) -> None:
                code, payload = hub._get(self.path.split("?")[0])
                self._reply(code, payload)

        from huggingface_hub import constants

        self._saved_offline = (constants.HF_HUB_OFFLINE, os.environ.pop("HF_HUB_OFFLINE", None))
        constants.HF_HUB_OFFLINE = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._saved_offline is not None:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE, env = self._saved_offline
            if env is not None:
                os.environ["HF_HUB_OFFLINE"] = env

    @property
    def endpoint(self) -> str:
        """Base URL to pass as ``endpoint=`` to ``huggingface_hub.HfApi``."""
        if self._server is None:
            raise RuntimeError("FakeHub is not running: use it as `with FakeHub() as hub:`")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- inspection ------------------------------------------------------------
    def repos(self) -> list[str]:
        with self._lock:
            return sorted(self._repos)

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Committed files of ``repo_id`` (path -> bytes). KeyError if never created."""
        with self._lock:
            return dict(self._repos[repo_id])

    # -- routes ----------------------------------------------------------------
    def _check_auth(self, headers: Any) -> bool:
        return headers.get("authorization", "") == f"Bearer {self.token}"

    def _post(self, path: str, body: bytes, headers: Any) -> tuple[int, Any]:
        if not self._check_auth(headers):
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/repos/create":
            req = json.loads(body or b"{}")
            org = req.get("organization")
            repo_id = f"{org}/{req['name']}" if org else req["name"]
            with self._lock:
                if repo_id in self._repos:
                    return 409, {
                        "error": "You already created this model repo",
                        "url": f"{self.endpoint}/{repo_id}",
                    }
                self._repos[repo_id] = {}
                self._commits[repo_id] = []
            return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}
        m = re.fullmatch(rf"/api/{_REPO}/preupload/(?P<rev>.+)", path)
        if m:
            files = json.loads(body)["files"]
            return 200, {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in files
                ]
            }
        m = re.fullmatch(rf"/api/{_REPO}/commit/(?P<rev>.+)", path)
        if m:
            return self._commit(m["repo"], body)
        self.unhandled.append(f"POST {path}")
        return 404, {"error": f"fake hub: no route POST {path}"}

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, Any]:
        with self._lock:
            if repo_id not in self._repos:
                return 404, {"error": f"Repository not found: {repo_id}"}
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "file":
                    content = value["content"]
                    data = (
                        base64.b64decode(content)
                        if value.get("encoding") == "base64"
                        else content.encode()
                    )
                    self._repos[repo_id][value["path"]] = data
                elif key == "deletedFile":
                    self._repos[repo_id].pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for p in [p for p in self._repos[repo_id] if p.startswith(prefix)]:
                        del self._repos[repo_id][p]
                elif key == "lfsFile":
                    return 400, {"error": "fake hub only accepts regular (inline) files"}
            oid = hashlib.sha1(
                b"".join(k.encode() + v for k, v in sorted(self._repos[repo_id].items()))
                + str(len(self._commits[repo_id])).encode()
            ).hexdigest()
            self._commits[repo_id].append(oid)
        return 200, {
            "commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}",
            "commitOid": oid,
            "success": True,
        }

    def _get(self, path: str) -> tuple[int, Any]:
        m = re.fullmatch(rf"/api/{_REPO}(/revision/(?P<rev>.+))?", path)
        if m:
            repo_id = m["repo"]
            with self._lock:
                if repo_id not in self._repos:
                    return 404, {"error": f"Repository not found: {repo_id}"}
                sha = self._commits[repo_id][-1] if self._commits[repo_id] else "0" * 40
                siblings = [{"rfilename": p} for p in sorted(self._repos[repo_id])]
            return 200, {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "siblings": siblings,
                "private": False,
            }
        self.unhandled.append(f"GET {path}")
        return 404, {"error": f"fake hub: no route GET {path}"}

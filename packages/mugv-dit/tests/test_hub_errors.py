"""Hub failures told apart in one line, without the Hub client's retry loop (issue 19).

Offline and not cached; the Hub unreachable (a loopback port that refuses connections)
and not cached; the repo or the file not on the Hub (a loopback server answering 404 the
way the Hub does). Each is timed: the client alone retried for about 24 s per file.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from mugv_dit import DiTConfig, MUGDiT, TextEncoder
from mugv_testing import build_hf_cache

FAST_S = 5.0  # generous for a loaded 2-core machine; the retry loop took ~24 s per file


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Offline mode lifted (the suite runs with HF_HUB_OFFLINE=1), an empty cache."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _endpoint(monkeypatch, url: str) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    # the client formats download URLs from this template, filled in at import
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )


@pytest.fixture
def refused_port():
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_unreachable_hub_fails_fast_and_says_so(online, monkeypatch, refused_port):
    _endpoint(monkeypatch, f"http://127.0.0.1:{refused_port}")
    start = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        MUGDiT.from_pretrained("MUG-V/MUG-V-inference")
    assert time.monotonic() - start < FAST_S
    text = _one_line(info.value)
    assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{refused_port}" in text
    assert "refused" in text and "not in the local cache" in text and "HF_HUB_OFFLINE=1" in text
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach the Hugging Face Hub"):
        TextEncoder("DeepFloyd/t5-v1_1-xxl")
    assert time.monotonic() - start < FAST_S


def test_unreachable_hub_still_loads_from_the_cache(online, monkeypatch, refused_port):
    torch.manual_seed(0)
    model = MUGDiT(DiTConfig.preset("debug"))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    build_hf_cache(online, "MUG-V/MUG-V-inference", {"dit.pt": buf.getvalue()})
    _endpoint(monkeypatch, f"http://127.0.0.1:{refused_port}")
    start = time.monotonic()
    loaded = MUGDiT.from_pretrained("MUG-V/MUG-V-inference")
    assert time.monotonic() - start < 30  # loading itself; no 2 x 24 s of retries
    for (k, a), b in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_offline_and_not_cached_says_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        MUGDiT.from_pretrained("MUG-V/MUG-V-inference")
    assert time.monotonic() - start < FAST_S
    text = _one_line(info.value)
    assert "not in the local Hugging Face cache" in text and "offline mode is on" in text
    assert "hf download MUG-V/MUG-V-inference dit.pt" in text
    with pytest.raises(FileNotFoundError, match="offline mode is on"):
        TextEncoder("DeepFloyd/t5-v1_1-xxl")


class _Hub404(BaseHTTPRequestHandler):
    """Answers every request 404 with the Hub's error code for a missing repo or file."""

    code = "RepoNotFound"

    def log_message(self, *args):
        pass

    def _answer(self):
        body = b'{"error": "not found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", self.code)
        self.send_header(
            "X-Error-Message",
            "Repository not found" if self.code == "RepoNotFound" else "Entry not found",
        )
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("RepoNotFound", "does not exist or is private"),
        ("EntryNotFound", "no MUG-DiT weights in Hub repo mug-test/none"),
    ],
    ids=["repo", "file"],
)
def test_not_found_on_the_hub(online, monkeypatch, code, expected):
    handler = type("Handler", (_Hub404,), {"code": code})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _endpoint(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        start = time.monotonic()
        with pytest.raises(FileNotFoundError) as info:
            MUGDiT.from_pretrained("mug-test/none")
        assert time.monotonic() - start < FAST_S
        assert expected in _one_line(info.value)
    finally:
        server.shutdown()
        server.server_close()

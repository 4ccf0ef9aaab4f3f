"""The offline cache helper is resolved by the real huggingface_hub download functions."""

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from mugv_testing import build_hf_cache, offline_hf_cache


def test_hf_hub_download_resolves_offline(tmp_path):
    weights = bytes(range(256)) * 64
    build_hf_cache(tmp_path, "MUG-V/tiny", {"config.json": b'{"depth": 2}', "sub/w.bin": weights})
    with offline_hf_cache(tmp_path):
        path = hf_hub_download("MUG-V/tiny", "sub/w.bin")
        assert Path(path).read_bytes() == weights
        snap_path = Path(snapshot_download("MUG-V/tiny")) / "config.json"
        assert snap_path.read_bytes() == b'{"depth": 2}'
        # The blob is stored once, named by its sha256, and the snapshot links to it.
        blob = snap_path.parents[2] / "blobs" / hashlib.sha256(weights).hexdigest()
        assert blob.read_bytes() == weights


def test_missing_file_raises_offline(tmp_path):
    build_hf_cache(tmp_path, "MUG-V/tiny", {"config.json": b"{}"})
    with offline_hf_cache(tmp_path), pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("MUG-V/tiny", "model.safetensors")


def test_second_build_moves_main(tmp_path):
    build_hf_cache(tmp_path, "org/m", {"a.txt": b"one"})
    build_hf_cache(tmp_path, "org/m", {"a.txt": b"two"})
    with offline_hf_cache(tmp_path):
        assert Path(hf_hub_download("org/m", "a.txt")).read_bytes() == b"two"


def test_repo_id_validated(tmp_path):
    with pytest.raises(ValueError, match="org/name"):
        build_hf_cache(tmp_path, "noslash", {"a": b""})

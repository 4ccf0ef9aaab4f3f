"""Build a Hugging Face Hub cache on disk, in the standard layout, for offline tests.

Layout (what ``huggingface_hub`` reads)::

    <cache>/models--<org>--<name>/
        blobs/<sha256>                       file contents, named by content hash
        refs/<revision>                      text file holding the commit hash
        snapshots/<commit>/<path>            relative symlink to ../../blobs/<sha256>
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

_REPO_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}


def build_hf_cache(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    files: Mapping[str, bytes | str | os.PathLike[str]],
    *,
    repo_type: str = "model",
    revision: str = "main",
) -> Path:
    """Write ``files`` (repo path -> bytes, or a local file to copy) as one cached commit.

    Returns the snapshot folder. Calling it again for the same repo adds a new commit
    and moves ``revision`` to it, as a fresh download would.
    """
    if "/" not in repo_id:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    repo_dir = Path(cache_dir) / f"{_REPO_PREFIX[repo_type]}--{repo_id.replace('/', '--')}"
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    payloads: dict[str, bytes] = {}
    for rel, content in files.items():
        if isinstance(content, str | os.PathLike) and not isinstance(content, bytes):
            payloads[rel] = Path(content).read_bytes()
        else:
            payloads[rel] = content  # type: ignore[assignment]
    commit = hashlib.sha1(
        b"".join(k.encode() + hashlib.sha256(v).digest() for k, v in sorted(payloads.items()))
    ).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    for rel, data in payloads.items():
        digest = hashlib.sha256(data).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    refs = repo_dir / "refs"
    refs.mkdir(exist_ok=True)
    (refs / revision).write_text(commit)
    return snapshot


@contextlib.contextmanager
def offline_hf_cache(cache_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Point ``huggingface_hub`` at ``cache_dir`` in offline mode for the duration.

    Sets the environment variables and the already-imported constants, so code that
    reads either sees the same cache and no network is touched.
    """
    from huggingface_hub import constants

    cache = Path(cache_dir)
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    saved_const = {k: getattr(constants, k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    os.environ["HF_HUB_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_CACHE = str(cache)
    constants.HF_HUB_OFFLINE = True
    try:
        yield cache
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for k, v in saved_const.items():
            setattr(constants, k, v)

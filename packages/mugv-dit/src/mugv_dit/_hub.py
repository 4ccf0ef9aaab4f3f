"""Hub access that fails fast and says why, in one line (public as ``mugv_dit.HubAccess``;
mugv-infer uses it too).

``huggingface_hub`` retries a failed connection five times with back-off (about 24 s per
file), then reports every failure alike: "cannot find the requested files in the local
cache. Please check your connection". A loader that tries two files (``config.json``, then
``dit.pt``) thus waited 49 s without network and blamed the cache. Here:

- one TCP connection to the endpoint (``probe_timeout_s``) decides whether the Hub is
  reachable before any download; unreachable, the cache alone is used (what the Hub client
  falls back to anyway), without the retry loop;
- failures are told apart: offline mode and not cached; Hub unreachable and not cached;
  repo (or revision) not found or not accessible; file not in the repo.

With an HTTP(S) proxy configured the probe is skipped (only the proxy may be reachable).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Seconds one TCP connection to the Hub may take before it counts as unreachable.
PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline(local_files_only: bool = False) -> bool:
    """True when no request may be made: ``local_files_only`` or ``HF_HUB_OFFLINE``."""
    from huggingface_hub import constants

    return bool(local_files_only or constants.HF_HUB_OFFLINE)


def hub_endpoint(endpoint: str | None = None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def hub_unreachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub endpoint cannot be reached (one TCP connection), or None when it can
    (or when a proxy is configured and the probe would prove nothing)."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    url = urlsplit(hub_endpoint(endpoint))
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def _find_hub_error(exc: BaseException | None) -> BaseException | None:
    """The huggingface_hub error behind ``exc`` (transformers wraps them in OSError)."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    seen = exc
    while seen is not None:
        if isinstance(seen, EntryNotFoundError | HfHubHTTPError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _hub_cause(exc: BaseException | None) -> BaseException | None:
    found = _find_hub_error(exc)
    return exc if found is None else found


def hub_error(
    repo_id: str,
    filename: str | None,
    exc: BaseException | None,
    *,
    offline: bool,
    unreachable: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> OSError:
    """One-line error for a Hub file that could not be had: which of offline / unreachable
    / repo not found / file not found it is, and what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    exc = _hub_cause(exc)
    what = f"{repo_id}/{filename}" if filename else repo_id
    where = f" ({cache_dir})" if cache_dir else ""
    download = f"`hf download {repo_id}{' ' + filename if filename else ''}`"
    if isinstance(exc, GatedRepoError):
        return PermissionError(
            f"Hub repo {repo_id} is gated: accept its terms on its Hub page, then log in "
            "(`hf auth login` or HF_TOKEN)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return FileNotFoundError(
            f"Hub repo {repo_id} does not exist or is private (check the id; for a private "
            "repo log in with `hf auth login` or set HF_TOKEN)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return FileNotFoundError(f"Hub repo {repo_id} has no such revision ({exc})")
    if offline:
        return FileNotFoundError(
            f"{what} is not in the local Hugging Face cache{where} and offline mode is on "
            f"(HF_HUB_OFFLINE=1 or local_files_only): download it once with network access, "
            f"{download}"
        )
    if unreachable is None and isinstance(exc, LocalEntryNotFoundError):  # network error
        cause = exc.__cause__ or exc.__context__
        unreachable = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    if unreachable is not None:
        return ConnectionError(
            f"cannot reach the Hugging Face Hub at {hub_endpoint(endpoint)} ({unreachable}) "
            f"and {what} is not in the local cache{where}: check the network, proxy or "
            f"HF_ENDPOINT, or download it where there is network ({download}) and set "
            "HF_HUB_OFFLINE=1"
        )
    if exc is None or isinstance(exc, EntryNotFoundError):
        return FileNotFoundError(f"Hub repo {repo_id} has no file {filename}")
    return OSError(f"cannot download {what} from the Hub: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class HubAccess:
    """How a loader may reach the Hub this time: decided once, before any download."""

    offline: bool
    """``HF_HUB_OFFLINE`` or ``local_files_only``: no request at all."""
    unreachable: str | None
    """Why the endpoint did not answer one TCP connection (None: reachable or unknown)."""
    endpoint: str | None = None

    @classmethod
    def check(cls, local_files_only: bool = False, endpoint: str | None = None) -> HubAccess:
        offline = hub_offline(local_files_only)
        return cls(offline, None if offline else hub_unreachable(endpoint), endpoint)

    @property
    def cache_only(self) -> bool:
        return self.offline or self.unreachable is not None

    def download(
        self, repo_id: str, filename: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> str | None:
        """``hf_hub_download`` (``kwargs``: ``revision``, ``cache_dir``, ``token``,
        ``subfolder``, ...), from the cache alone when offline or unreachable (no retry
        loop). ``missing_ok``: None when the repo (or, cache only, the cache) lacks the file,
        for loaders that try several layouts; every other failure raises `hub_error`."""
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        kwargs = {k: v for k, v in kwargs.items() if k != "local_files_only"}
        if self.endpoint is not None:
            kwargs["endpoint"] = self.endpoint
        try:
            return huggingface_hub.hf_hub_download(
                repo_id, filename, local_files_only=self.cache_only, **kwargs
            )
        except LocalEntryNotFoundError as exc:
            if missing_ok and self.cache_only:
                return None
            raise self.error(repo_id, filename, exc, kwargs.get("cache_dir")) from None
        except EntryNotFoundError as exc:
            if missing_ok:
                return None
            raise self.error(repo_id, filename, exc) from None
        except (OSError, ValueError) as exc:  # repo / revision not found, gated, HTTP errors
            raise self.error(repo_id, filename, exc, kwargs.get("cache_dir")) from None

    @staticmethod
    def caused(exc: BaseException) -> bool:
        """Whether a huggingface_hub error is behind ``exc``."""
        return _find_hub_error(exc) is not None

    def error(
        self,
        repo_id: str,
        filename: str | None,
        exc: BaseException | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> OSError:
        """`hub_error` for this access (``exc`` None: the file was not found)."""
        from huggingface_hub import constants

        return hub_error(
            repo_id, filename, exc, offline=self.offline, unreachable=self.unreachable,
            endpoint=self.endpoint, cache_dir=str(cache_dir or constants.HF_HUB_CACHE),
        )  # fmt: skip

"""Write one benchmark's section of ``benchmarks/RESULTS.md`` atomically.

Each benchmark owns a section delimited by HTML comments, so scripts of different
packages update their own figures without touching anyone else's.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts under `benchmarks/` and `packages/*/benchmarks/`; each section\n"
    "names its date, device and the command that produced it. Never edited by hand.\n"
)


def device_description() -> str:
    """A short description of the device the figures were measured on."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def write_section(name: str, body: str, *, command: str, device: str | None = None) -> Path:
    """Replace (or append) the section ``name`` in RESULTS.md with ``body`` (markdown)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    date = _dt.date.today().isoformat()
    section = (
        f"{start}\n## {name}\n\n_{date} · {device or device_description()} · `{command}`_\n\n"
        f"{body.rstrip()}\n{end}\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, prefix=".RESULTS.", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, RESULTS)
    return RESULTS

"""Official generation presets: sizes, durations, prompts, and the official quirks as options.

All values follow the official inference code (architecture reference §E). Sizes are
(height, width) in pixels; the official aspect keys are "H:W" strings, so "16:9" is the
portrait 1280 x 720 clip and "9:16" the landscape 720 x 1280 one (reference §H.10).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Official aspect table at 720p, key "H:W" -> (height, width) in pixels (reference §E).
ASPECT_RATIOS_720P: dict[str, tuple[int, int]] = {
    "9:16": (720, 1280),
    "3:4": (832, 1110),
    "1:1": (960, 960),
    "4:3": (1108, 832),
    "16:9": (1280, 720),
}

#: Resolution name -> aspect table. The official code knows only "720p".
RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {"720p": ASPECT_RATIOS_720P}

#: Duration name -> pixel frame count (reference §E, NUM_FRAMES_MAP): 14 and 10 latent frames.
DURATIONS: dict[str, int] = {"5s": 105, "3s": 73}

#: The fixed negative prompt of the official CFG branch (reference §C).
OFFICIAL_NEGATIVE_PROMPT = (
    "ugly, blurry, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, "
    "fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
    "signature, watermark, username, blurry"
)

#: VAE spatial factor (8) times DiT patch (2): sizes that are multiples of this tile exactly.
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class OfficialQuirks:
    """How the official inference code behaves where it is inconsistent (reference §H).

    ``OfficialQuirks.official()`` reproduces the official numerics and file; the default
    ``OfficialQuirks()`` keeps the official numerics but fixes what only hurts the output
    file. Each field is one documented quirk.
    """

    bf16_shift_ratio: bool = True
    """Compute the timestep-shift ratio from bf16 height/width/frames (7.0 instead of 7.016
    at 720p 5 s, §H.5). Changes the timesteps, so it is part of the official numerics."""

    write_official_fps: bool = False
    """Write the MP4 at 20 fps while conditioning the model on 30 fps, as the official code
    does (§H.4). False writes the file at the fps the model was conditioned on."""

    odd_sizes: bool = False
    """Keep the official 1110 / 1108 px sizes of "3:4" and "4:3" (§H.9). The latent is
    floored to 138 and decodes to 1104 px, so the prepended reference frame is cropped to
    the decoded size. False uses 1104 px throughout (multiple of 16)."""

    reference_posterior_sample: bool = True
    """Encode the reference image with a posterior sample, as the official code does
    (§B.7); False uses the posterior mean (deterministic reference latent)."""

    @classmethod
    def official(cls) -> OfficialQuirks:
        """Every quirk on: the official numerics and the official file."""
        return cls(
            bf16_shift_ratio=True,
            write_official_fps=True,
            odd_sizes=True,
            reference_posterior_sample=True,
        )

    def replace(self, **changes: bool) -> OfficialQuirks:
        return dataclasses.replace(self, **changes)


#: fps the official code conditions the model on, and the fps it writes the file at (§H.4).
OFFICIAL_MODEL_FPS = 30
OFFICIAL_WRITE_FPS = 20
#: Official "aesthetic score" appended to the positive prompt (§E).
OFFICIAL_AES_SCORE = 6.0


def resolve_size(
    aspect: str = "16:9", resolution: str = "720p", *, odd_sizes: bool = False
) -> tuple[int, int]:
    """(height, width) in pixels for an official aspect key at ``resolution``.

    With ``odd_sizes=False`` the 1110 / 1108 px sides are snapped down to 1104, the size the
    official latent decodes to anyway (reference §H.9).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"unknown resolution {resolution!r}; choose one of {sorted(RESOLUTIONS)} "
            "or pass height= and width= explicitly"
        )
    table = RESOLUTIONS[resolution]
    if aspect not in table:
        raise ValueError(
            f"unknown aspect ratio {aspect!r} (keys are 'H:W', so '16:9' is portrait); "
            f"choose one of {list(table)} or pass height= and width= explicitly"
        )
    h, w = table[aspect]
    if not odd_sizes:
        h, w = (h // SIZE_MULTIPLE) * SIZE_MULTIPLE, (w // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return h, w


def resolve_num_frames(duration: str | int) -> int:
    """Pixel frame count for a duration name ("5s", "3s") or an explicit frame count."""
    if isinstance(duration, str) and duration.isdigit():
        duration = int(duration)
    if isinstance(duration, int) and not isinstance(duration, bool):
        if duration < 1:
            raise ValueError(f"frame count must be >= 1, got {duration}")
        return duration
    if duration not in DURATIONS:
        raise ValueError(
            f"unknown duration {duration!r}; choose one of {list(DURATIONS)} "
            "or give an integer frame count"
        )
    return DURATIONS[duration]


def with_aesthetic_score(prompt: str, aes_score: float | None) -> str:
    """The official positive-prompt suffix: "<prompt> aesthetic score: 6.0." (§E)."""
    if aes_score is None:
        return prompt
    return f"{prompt} aesthetic score: {aes_score:.1f}."

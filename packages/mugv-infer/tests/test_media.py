"""Reference-image preprocessing, MP4 round trips and the preset tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mugv_infer import (
    ASPECT_RATIOS_720P,
    OfficialQuirks,
    preprocess_image,
    read_mp4,
    resolve_num_frames,
    resolve_size,
    write_mp4,
)
from mugv_testing import assert_close


def _gradient_image(w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), mode="RGB")


@pytest.mark.parametrize(
    ("src", "dst", "resized", "box"),
    [
        # wide source into a square: height rules (rh = 2 > rw = 1), 80 -> round(160*... )
        ((80, 20), (40, 40), (160, 40), (60, 0)),
        # tall source into a landscape target: width rules, crop rows centred
        ((30, 90), (20, 60), (60, 180), (0, 80)),
        # 33x50 (WxH) into 7x5 (HxW): rw = 5/33 > rh = 7/50, height round(7.58) = 8,
        # crop offset round(0.5) = 0 (Python rounds half to even, as the official code)
        ((33, 50), (7, 5), (5, 8), (0, 0)),
    ],
    ids=["wide", "tall", "tiny"],
)
def test_cover_resize_and_centre_crop_match_hand_computation(src, dst, resized, box):
    """Cover resize (larger scale, rounded side), bicubic, crop offset rounded (§B.7)."""
    img = _gradient_image(*src)
    h, w = dst
    out = preprocess_image(img, h, w)
    assert out.shape == (3, h, w)
    ref = img.resize(resized, Image.BICUBIC)
    left, top = box
    arr = np.asarray(ref)[top : top + h, left : left + w].astype(np.float32) / 255.0
    expected = (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5
    assert torch.equal(out, expected)
    assert out.min() >= -1 and out.max() <= 1


def test_image_modes_and_unreadable_files(tmp_path):
    gray = Image.fromarray(np.full((8, 8), 128, np.uint8), mode="L")
    assert_close(preprocess_image(gray, 8, 8), torch.full((3, 8, 8), 128 / 255 * 2 - 1))
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 10))
    with pytest.warns(UserWarning, match="alpha"):
        out = preprocess_image(rgba, 8, 8)
    assert torch.all(out[0] == 1) and torch.all(out[1] == -1)
    with pytest.raises(ValueError, match="mode 'F'"):
        preprocess_image(Image.new("F", (8, 8)), 8, 8)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read reference image"):
        preprocess_image(bad, 8, 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preprocess_image(tmp_path / "missing.png", 8, 8)


@pytest.mark.parametrize("fps", [20, 30, 24000 / 1001], ids=["20", "30", "ntsc"])
def test_mp4_round_trip_frame_count_size_fps(tmp_path, fps):
    torch.manual_seed(0)
    n, h, w = 9, 32, 48
    # A smooth moving pattern keeps H.264 (crf 17) error small.
    t = torch.linspace(0, 1, n).view(1, n, 1, 1)
    yy = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    planes = [
        torch.sin(3 * xx + 2 * t) + 0 * yy,
        torch.cos(2 * yy - t) + 0 * xx,
        0.5 * xx * yy + 0 * t,
    ]
    video = torch.cat([p.expand(1, n, h, w) for p in planes])
    path = write_mp4(video, tmp_path / "clip", fps=fps)
    assert path.name == "clip.mp4" and path.exists()
    assert not list(tmp_path.glob(".clip*"))  # no temporary left behind
    back = read_mp4(path)
    assert back.num_frames == n and back.size == (h, w)
    assert back.fps == pytest.approx(fps, rel=1e-4)
    expected = ((video.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    err = np.abs(back.frames.astype(np.int16) - expected.permute(1, 2, 3, 0).numpy()).mean()
    # yuv420p halves chroma resolution; a garbled or reordered frame would be off by ~50+.
    assert err < 6.0, f"mean abs error {err:.2f} / 255 after H.264"


def test_mp4_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(np.zeros((2, 15, 16, 3), np.uint8), tmp_path / "x.mp4", fps=20)


def test_presets_and_quirk_options():
    assert ASPECT_RATIOS_720P["16:9"] == (1280, 720)  # "H:W": portrait (§H.10)
    assert resolve_size("9:16") == (720, 1280)
    assert resolve_size("3:4", odd_sizes=True) == (832, 1110)
    assert resolve_size("3:4") == (832, 1104) and resolve_size("4:3") == (1104, 832)
    assert resolve_num_frames("5s") == 105 and resolve_num_frames("3s") == 73
    assert resolve_num_frames(17) == 17
    with pytest.raises(ValueError, match="unknown aspect ratio '2:1'"):
        resolve_size("2:1")
    with pytest.raises(ValueError, match="unknown resolution"):
        resolve_size("16:9", "1080p")
    with pytest.raises(ValueError, match="unknown duration '7s'"):
        resolve_num_frames("7s")
    official = OfficialQuirks.official()
    assert official.write_official_fps and official.odd_sizes and official.bf16_shift_ratio
    assert not OfficialQuirks().write_official_fps

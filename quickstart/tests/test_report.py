"""Contact sheet layout and loss-curve PNG."""

import numpy as np
import pytest
from mugv_quickstart.report import contact_sheet, table, write_loss_curves
from PIL import Image


def test_contact_sheet_places_every_fourth_frame():
    a = np.zeros((17, 8, 10, 3), np.uint8)
    a[:, :, :, 0] = np.arange(17)[:, None, None] * 10  # frame i has red = 10 i
    b = np.full((17, 8, 10, 3), 200, np.uint8)
    sheet = contact_sheet([("a", a), ("b", b)], every=4, scale=2, gap=2)
    row_h = 12 + 16 + 2
    assert sheet.shape == (2 + 2 * row_h, 2 + 5 * (20 + 2), 3)
    for c, i in enumerate(range(0, 17, 4)):  # frames 0, 4, 8, 12, 16 of clip a
        y, x = 2 + 12, 2 + c * 22
        assert (sheet[y : y + 16, x : x + 20, 0] == 10 * i).all()
    assert (sheet[2 + row_h + 12 : 2 + 2 * row_h - 2, 2:22] == 200).all()
    with pytest.raises(ValueError, match="same frame size"):
        contact_sheet([("a", a), ("c", a[:, :4])])


def test_loss_curves_png(tmp_path):
    path = write_loss_curves(
        tmp_path / "loss.png", {"VAE": np.linspace(1, 0.1, 50), "DiT": [2.0, 1.5, 1.2]}
    )
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (1000, 340)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_table():
    assert table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_verdict_needs_chance_and_the_untrained_model_beaten():
    from mugv_quickstart.stages import verdict_lines

    def row(colour, direction, count=32):
        return {"colour": colour, "direction": direction, "both": 0.0, "count": count}

    scores = {
        "trained/t2v": row(0.5, 11 / 32),  # P(Bin(32, 1/4) >= 16) = 0.0020; >= 11: 0.15
        "untrained/t2v": row(0.25, 0.25),
        "trained/i2v": row(0.5, 0.5),
        "untrained/i2v": row(0.25, 0.5),  # beats chance too: not shown for direction
    }
    lines = verdict_lines(scores, scores)
    assert len(lines) == 4
    t2v, i2v = lines[0], lines[1]
    assert "colour 50% (p = 0.002; untrained 25%): shown" in t2v
    assert "direction 34% (p = 0.15; untrained 25%): not shown" in t2v
    assert "direction 50% (p = 0.002; untrained 50%): not shown" in i2v


def test_vae_rows_keep_the_trunk_and_video_phases_apart():
    from mugv_quickstart.stages import vae_rows

    losses = [0.5] * 10 + [0.1] * 10 + [2.0] * 10 + [1.0] * 10  # 20 trunk, 20 video steps
    summary = {"psnr_heldout": 27.07, "psnr_untrained": 14.6}
    trunk, video = vae_rows(summary, losses, 20)
    assert trunk[:4] == ["VAE 2D trunk (image autoencoder)", 20, "0.5000", "0.1000"]
    assert video[:4] == ["VAE (debug, video)", 20, "2.0000", "1.0000"]
    assert "27.07 dB" in video[4] and "14.60 dB" in video[4]
    (only,) = vae_rows(summary, losses[20:], 0)  # no trunk steps: one row
    assert only[1:4] == [20, "2.0000", "1.0000"]


def test_reproducibility_band_is_checked_and_printed():
    """The full preset's figures against the range seen on other machines; other settings
    get no band (it was recorded for the full preset at seed 0 only)."""
    from mugv_quickstart.config import QuickstartConfig
    from mugv_quickstart.stages import REFERENCE_BAND, band_check, band_lines

    class Ctx:
        def __init__(self, psnr, t2v_dir, i2v_dir, probe_colour):
            self._s = {
                "vae": {"psnr_heldout": psnr},
                "evaluate": {
                    "agreement": {"trained/t2v": {"direction": t2v_dir},
                                  "trained/i2v": {"direction": i2v_dir}},
                    "latent": {"trained/t2v": {"colour": probe_colour}},
                },
            }  # fmt: skip

        def summary(self, name):
            return self._s[name]

    full = QuickstartConfig.preset("full")
    inside = Ctx(26.7, 0.5625, 0.5, 0.9)
    assert [r[4] for r in band_check(inside, full)] == [True] * len(REFERENCE_BAND)
    outside = Ctx(26.2, 0.5625, 0.75, 0.9)  # PSNR and I2V direction out of range
    assert [r[4] for r in band_check(outside, full)] == [False, True, False, True]
    text = "\n".join(band_lines(outside, full))
    assert "| VAE held-out PSNR (dB) | 26.20 | 26.50 - 26.89 | **no** |" in text
    assert "| trained DiT, T2V direction | 56% | 50% - 66% | yes |" in text
    assert band_check(inside, QuickstartConfig.preset("fast")) is None
    assert band_check(inside, QuickstartConfig.preset("full", seed=1)) is None
    assert "no reference range" in "\n".join(band_lines(inside, QuickstartConfig.preset("fast")))

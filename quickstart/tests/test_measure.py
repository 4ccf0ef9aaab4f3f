"""Colour and direction measures: right on real clips, chance on noise, known values."""

import numpy as np
import pytest
from mugv_quickstart.measure import (
    NONE,
    PROTOTYPE_HUES,
    agreement,
    classify_colour,
    estimate_direction,
    p_above_chance,
    psnr,
)
from mugv_quickstart.synthetic import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SetConfig,
    load_frames,
    make_set,
    render_clip,
)


def test_prototype_hues_are_the_textbook_values():
    # Hue of (225, 35, 35) is 0; of (45, 80, 235) is 240 - 60 * 35 / 190.
    assert PROTOTYPE_HUES["red"] == 0.0
    assert PROTOTYPE_HUES["blue"] == pytest.approx(240 - 60 * 35 / 190)
    assert PROTOTYPE_HUES["green"] == pytest.approx(120 + 60 * 15 / 160)


def test_every_clip_of_a_real_set_is_measured_right(tmp_path):
    clips = make_set(tmp_path, seed=5, config=SetConfig(with_rejects=False))
    predicted, expected = [], []
    for c in clips:  # through H.264 and back: what the quickstart measures
        frames = load_frames(tmp_path, c)
        colour = classify_colour(frames)
        predicted.append((colour, estimate_direction(frames, colour)))
        expected.append((c.colour, c.direction))
    score = agreement(predicted, expected)
    assert score.count == len(clips) > 200
    assert score.colour == 1.0 and score.direction == 1.0 and score.both == 1.0


def test_noise_scores_about_chance():
    rng = np.random.default_rng(0)
    predicted, expected = [], []
    combos = [(c, d) for c in COLOURS for d in DIRECTIONS]
    for k in range(64):
        frames = rng.integers(0, 256, (17, 48, 64, 3), dtype=np.uint8)
        colour = classify_colour(frames)
        predicted.append((colour, estimate_direction(frames, colour)))
        expected.append(combos[k % len(combos)])
    score = agreement(predicted, expected)
    assert score.colour <= 0.45  # chance is 0.25
    assert score.direction <= 0.45
    # A colour-swapped or reversed real clip is measured wrong, not right by luck.
    frames = render_clip("blue", "circle", "left", seed=2)
    assert classify_colour(frames[..., ::-1].copy()) != "blue"
    assert estimate_direction(frames[::-1].copy(), "blue") == "right"


@pytest.mark.parametrize("shape", SHAPES)
def test_known_colour_and_direction_on_hand_made_frames(shape):
    frames = np.full((9, 32, 48, 3), 120, np.uint8)  # grey
    for i in range(9):  # a green 6x6 block moving down 2 px per frame
        frames[i, 4 + 2 * i : 10 + 2 * i, 20:26] = (40, 200, 55)
    assert classify_colour(frames) == "green"
    assert estimate_direction(frames) == "down"
    still = np.repeat(frames[:1], 9, axis=0)
    assert estimate_direction(still) == NONE
    assert classify_colour(np.full((9, 32, 48, 3), 120, np.uint8)) == NONE
    clip = render_clip("yellow", shape, "up", seed=3)
    assert (classify_colour(clip), estimate_direction(clip)) == ("yellow", "up")


def test_psnr_known_values():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # mse = 255^2 / 48
    assert psnr(b, a) == pytest.approx(10 * np.log10(48))
    assert psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:2])
    with pytest.raises(ValueError, match="uint8"):
        classify_colour(np.zeros((2, 8, 8, 3), np.float32))


def test_p_above_chance_known_values():
    # 16 of 16 at chance 1/4: 4^-16; 0 of n: certain; 4 of 16: P(X >= 4), X ~ Bin(16, 1/4).
    assert p_above_chance(1.0, 16) == pytest.approx(0.25**16)
    assert p_above_chance(0.0, 16) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    draws = (rng.random((200_000, 16)) < 0.25).sum(1)
    assert p_above_chance(4 / 16, 16) == pytest.approx((draws >= 4).mean(), abs=0.005)
    # More clips at the same agreement: stronger evidence.
    assert p_above_chance(0.5, 32) < p_above_chance(0.5, 16) < 0.05
    with pytest.raises(ValueError, match="count >= 1"):
        p_above_chance(0.5, 0)

"""The synthetic set: deterministic for a seed, the split and ground truth it promises."""

import hashlib
import json

import numpy as np
import pytest
from mugv_quickstart.synthetic import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SetConfig,
    is_heldout,
    load_frames,
    load_set,
    make_set,
    render_clip,
)

SMALL = SetConfig(clips_per_train_combo=1, clips_per_heldout_combo=1)


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_frames(tmp_path):
    a = _digest(make_set(tmp_path / "a", seed=3, config=SMALL) and tmp_path / "a")
    b = _digest(make_set(tmp_path / "b", seed=3, config=SMALL) and tmp_path / "b")
    assert a == b
    make_set(tmp_path / "c", seed=4, config=SMALL)
    c = _digest(tmp_path / "c")
    assert a.keys() == c.keys()
    clips = [k for k in a if k.endswith(".mp4") and "reject" not in k]
    assert all(a[k] != c[k] for k in clips)


def test_split_holds_out_one_shape_per_colour_and_direction(tmp_path):
    clips = make_set(tmp_path, seed=0, config=SMALL)
    clean = [c for c in clips if c.kind == "clean"]
    held = {(c.colour, c.shape, c.direction) for c in clean if c.split == "heldout"}
    train = {(c.colour, c.shape, c.direction) for c in clean if c.split == "train"}
    assert len(held) == 16 and len(train) == 32 and not held & train
    for colour in COLOURS:
        for direction in DIRECTIONS:
            shapes = [s for s in SHAPES if (colour, s, direction) in held]
            assert len(shapes) == 1  # exactly one held-out shape per pair...
            assert sum((colour, s, direction) in train for s in SHAPES) == 2  # ...seen with 2
    # Held-out captions are sentences never seen in training.
    train_caps = {c.caption for c in clips if c.split == "train"}
    assert not {c.caption for c in clean if c.split == "heldout"} & train_caps
    for c in clean:
        assert c.colour in c.caption and c.shape in c.caption and c.direction in c.caption
        assert is_heldout(c.colour, c.shape, c.direction) == (c.split == "heldout")


def test_files_side_cars_and_bad_files(tmp_path):
    clips = make_set(tmp_path, seed=0, config=SMALL)
    assert load_set(tmp_path) == clips
    assert json.loads((tmp_path / "clips.json").read_text())[0]["id"] == clips[0].id
    kinds = {c.kind for c in clips}
    assert kinds == {"clean", "static", "blurred", "duplicate", "truncated", "not_video"}
    for c in clips:
        if c.split == "train":
            assert (tmp_path / c.path).with_suffix(".txt").read_text().strip() == c.caption
    ok = [c for c in clips if c.kind not in ("truncated", "not_video")]
    for c in ok[:3] + [c for c in ok if c.kind != "clean"]:
        frames = load_frames(tmp_path, c)
        assert frames.shape == (17, 48, 64, 3)
    dup = next(c for c in clips if c.kind == "duplicate")
    src = next(c for c in clips if c.kind == "clean" and c.split == "train")
    assert (tmp_path / dup.path).read_bytes() == (tmp_path / src.path).read_bytes()
    for kind in ("truncated", "not_video"):
        bad = next(c for c in clips if c.kind == kind)
        with pytest.raises(ValueError, match="video"):
            load_frames(tmp_path, bad)
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total < 1_000_000  # "a few MB at most" (the full set is ~1.3 MB)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_object_moves_in_the_captioned_direction_and_stays_inside(direction):
    frames = render_clip("red", "square", direction, seed=1)
    f = frames.astype(int)
    red = f[..., 0] - np.maximum(f[..., 1], f[..., 2]) > 50
    ys, xs = np.nonzero(red[0])
    ye, xe = np.nonzero(red[-1])
    dx, dy = xe.mean() - xs.mean(), ye.mean() - ys.mean()
    ux, uy = DIRECTIONS[direction]
    assert dx * ux + dy * uy > 15  # about 18-25 px of travel along the direction
    assert abs(dx * uy) + abs(dy * ux) < 1  # and none across it
    # Fully inside the frame on every frame: the object's area does not shrink.
    areas = red.sum(axis=(1, 2))
    assert areas.min() > 0.9 * areas.max()


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="8k \\+ 1"):
        SetConfig(num_frames=16)
    with pytest.raises(ValueError, match="multiples of 16"):
        SetConfig(height=40)
    with pytest.raises(ValueError, match="unknown colour"):
        render_clip("purple", "square", "left", seed=0)

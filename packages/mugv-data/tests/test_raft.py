"""Motion stage, torchvision RAFT backend: a tiny randomly initialised raft_small saved here."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from mugv_data import CurationConfig, curate
from mugv_data._video import write_video
from mugv_data.config import MotionConfig
from mugv_data.stages import quality
from mugv_data.synthetic import render_scene

pytest.importorskip("torchvision", reason="the RAFT backend needs the 'raft' extra")
from torchvision.models.optical_flow import raft_small
from torchvision.models.optical_flow.raft import RAFT


@pytest.fixture(scope="module")
def raft(tmp_path_factory):
    torch.manual_seed(0)
    model = raft_small(weights=None, progress=False).eval()
    path = tmp_path_factory.mktemp("raft") / "raft_small.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _direct(model, a: np.ndarray, b: np.ndarray) -> float:
    """Mean flow magnitude straight from the model (frames already >= 128 px, multiples of 8)."""

    def t(x):
        return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    with torch.no_grad():
        flow = model(t(a), t(b))[-1][0]
    return float(torch.linalg.vector_norm(flow, dim=0).mean())


def test_raft_motion_in_the_pipeline_matches_the_model(raft, tmp_path, monkeypatch):
    model, weights = raft
    h, w, n = 128, 136, 30
    frames = render_scene(n, h, w, seed=3, pan=(2.0, 1.0))
    src = tmp_path / "in"
    src.mkdir()
    write_video(src / "pan.mp4", frames, 24.0)
    # What the curation decodes, read back independently with PyAV.
    with av.open(str(src / "pan.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == n

    calls = []
    forward = RAFT.forward

    def spy(self, image1, image2, *args, **kwargs):
        calls.append((image1.clone(), image2.clone()))
        return forward(self, image1, image2, *args, **kwargs)

    monkeypatch.setattr(RAFT, "forward", spy)
    motion = {"backend": "raft", "raft_weights": str(weights), "min": 0.0, "max": 1e9}
    cfg = CurationConfig.from_dict(
        {"workers": 1, "default": {"motion": motion, "sharpness": {"enabled": False}}},
        base=CurationConfig.preset("synthetic"),
    )
    res = curate(src, tmp_path / "out", cfg)
    rows = res.table().to_pylist()
    assert len(rows) == 1
    row = rows[0]
    s, e = row["start_frame"], row["end_frame"]
    mid = (s + e - 1) // 2
    pairs = [(s, s + 1), (mid, mid + 1), (e - 2, e - 1)]
    # The clip's three pairs go through RAFT as one batch of three.
    assert len(calls) == 1 and calls[0][0].shape[0] == 3

    def norm(x):
        return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    for k, (a, b) in enumerate(pairs):
        torch.testing.assert_close(calls[0][0][k : k + 1], norm(decoded[a]), rtol=0, atol=0)
        torch.testing.assert_close(calls[0][1][k : k + 1], norm(decoded[b]), rtol=0, atol=0)
    monkeypatch.setattr(RAFT, "forward", forward)
    expected = float(np.mean([_direct(model, decoded[a], decoded[b]) for a, b in pairs]))
    assert row["motion"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert expected > 0


def test_raft_small_frames_are_upscaled_and_flow_scaled_back(raft):
    import torch.nn.functional as F

    model, weights = raft
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    b = np.roll(a, 2, axis=1)
    got = quality.motion([(a, b)], MotionConfig(backend="raft", raft_weights=str(weights)))

    def up(x):  # 64 -> 128 px (2x): the flow in 128-px pixels is halved back to 64-px pixels
        t = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return F.interpolate(t, size=(128, 128), mode="bilinear", align_corners=False)

    with torch.no_grad():
        flow = model(up(a), up(b))[-1][0]
    assert got == pytest.approx(0.5 * float(flow.norm(dim=0).mean()), rel=1e-4, abs=1e-5)


def test_raft_weights_errors(tmp_path):
    frames = [(np.zeros((128, 128, 3), np.uint8), np.zeros((128, 128, 3), np.uint8))]
    with pytest.raises(FileNotFoundError, match=r"motion\.raft_weights: no file.*farneback"):
        quality.motion(frames, MotionConfig(backend="raft", raft_weights=str(tmp_path / "no.pth")))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        quality.motion(frames, MotionConfig(backend="raft", raft_weights=str(bad)))
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="neither"):
        quality.motion(frames, MotionConfig(backend="raft", raft_weights=str(other)))
    with pytest.raises(ValueError, match=r"needs motion\.raft_weights"):
        MotionConfig(backend="raft")

"""The CLI's read-only commands and the config files it takes."""

from __future__ import annotations

import json

import pytest

from mugv_data import CurationConfig, explain, summarize
from mugv_data.cli import main


def test_stats_table_and_pngs(curated, tmp_path, capsys):
    result, _truth = curated
    assert main(["stats", str(result.out_dir), "--png-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    s = summarize(result.out_dir)
    assert s["kept"] == result.counts["kept"] and s["failed_videos"] == 3
    assert s["dropped_by_stage"] == {"dedup": 2, "motion": 2, "sharpness": 1}
    assert sum(s["buckets"].values()) == s["kept"]
    assert f"kept {s['kept']}" in out and "dropped at motion" in out
    for name in ("durations", "resolutions", "scores", "buckets"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_says_why(curated, capsys):
    result, _truth = curated
    assert main(["inspect", "blurry.mp4", "--out", str(result.out_dir)]) == 0
    out = capsys.readouterr().out
    assert "DROPPED at sharpness" in out and "outside [200, 2000]" in out
    text = explain(result.out_dir, "not_a_video.mp4")
    assert "FAILED at probe" in text
    text = explain(result.out_dir, "cuts.mp4")
    assert "cuts at [36 72]" in text and text.count("KEPT") == 3
    assert main(["inspect", "nope", "--out", str(result.out_dir)]) == 1


def test_config_files_and_errors(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'preset = "synthetic"\n[default.motion]\nmax = 7.5\n[sources.web.sharpness]\nmin = 50\n'
    )
    cfg = CurationConfig.from_file(toml)
    assert cfg.default.motion.max == 7.5 and cfg.default.scenes.cut_threshold == 35.0
    assert cfg.for_source("web").sharpness.min == 50 and cfg.for_source("web").motion.max == 7.5
    assert cfg.for_source("other") == cfg.default
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert CurationConfig.from_file(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match=r"unknown keys \[.mxa.\] in .default.motion."):
        CurationConfig.from_dict({"default": {"motion": {"mxa": 1}}})
    with pytest.raises(ValueError, match=r"min .* must not exceed max"):
        CurationConfig.from_dict({"default": {"sharpness": {"min": 10, "max": 1}}})
    with pytest.raises(ValueError, match=r"needs aesthetic\.clip_model"):
        CurationConfig.from_dict({"default": {"aesthetic": {"enabled": True}}})


def test_curation_imports_no_model_stack():
    import subprocess
    import sys

    code = (
        "import sys, mugv_data, mugv_data.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'mugv_vae', 'mugv_dit', 'ray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

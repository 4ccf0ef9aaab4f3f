"""Stages: finished ones are skipped on a rerun, interrupted ones are redone."""

import json

import pytest
from mugv_quickstart.config import QuickstartConfig
from mugv_quickstart.runner import RunError, Stage, run_stages

CFG = QuickstartConfig.preset("fast")


def _stages(calls, fail_at=None):
    def make(name):
        def fn(ctx, folder):
            calls.append(name)
            if name == fail_at:
                (folder / "half-written.bin").write_bytes(b"x")
                raise KeyboardInterrupt  # the user pressed Ctrl-C mid-stage
            if name == "b":  # a stage reads an earlier one's output and summary
                assert (ctx.folder("a") / "a.txt").read_text() == "from a"
                assert ctx.summary("a") == {"count": 1}
            (folder / f"{name}.txt").write_text(f"from {name}")
            return {"count": len(calls)}

        return Stage(name, f"stage {name}", fn)

    return [make("a"), make("b"), make("c")]


def test_rerun_skips_finished_stages_and_redoes_the_interrupted_one(tmp_path):
    calls, logs = [], []
    with pytest.raises(KeyboardInterrupt):
        run_stages(_stages(calls, fail_at="b"), tmp_path, CFG, log=logs.append)
    assert calls == ["a", "b"]
    assert (tmp_path / "a" / "done.json").is_file()
    assert (tmp_path / "b.partial" / "half-written.bin").is_file()
    assert not (tmp_path / "b").exists()

    calls.clear()
    results = run_stages(_stages(calls), tmp_path, CFG, log=logs.append)
    assert calls == ["b", "c"]  # a is not run again
    assert results["a"]["skipped"] and not results["b"]["skipped"]
    assert not (tmp_path / "b.partial").exists()
    assert (tmp_path / "b" / "b.txt").read_text() == "from b"
    assert not (tmp_path / "b" / "half-written.bin").exists()
    assert any("a: already done" in line for line in logs)

    calls.clear()
    results = run_stages(_stages(calls), tmp_path, CFG, log=logs.append)
    assert calls == [] and all(r["skipped"] for r in results.values())
    record = json.loads((tmp_path / "c" / "done.json").read_text())
    assert record["seconds"] >= 0 and record["summary"] == {"count": 2}


def test_stop_after_and_other_settings_are_refused(tmp_path):
    calls = []
    run_stages(_stages(calls), tmp_path, CFG, log=lambda m: None, stop_after="a")
    assert calls == ["a"]
    with pytest.raises(RunError, match="other settings"):
        run_stages(_stages(calls), tmp_path, CFG.preset("fast", seed=1), log=lambda m: None)
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages(_stages(calls), tmp_path, CFG, stop_after="zzz")


def test_config_presets_and_errors():
    assert QuickstartConfig.preset("full") == QuickstartConfig()
    assert CFG.fingerprint() != QuickstartConfig().fingerprint()
    assert CFG.fingerprint() == QuickstartConfig.preset("fast").fingerprint()
    with pytest.raises(ValueError, match="unknown quickstart preset"):
        QuickstartConfig.preset("huge")
    with pytest.raises(ValueError, match="dit_steps must be >= 1"):
        QuickstartConfig.preset("fast", dit_steps=0)


def test_package_import_does_not_load_torch():
    # The command must set OpenMP's environment before torch starts.
    import subprocess
    import sys

    code = "import sys, mugv_quickstart; assert 'torch' not in sys.modules; mugv_quickstart.psnr"
    subprocess.run([sys.executable, "-c", code], check=True)

"""Bad input table of mugv-data: every case asserts the error class and its message.

API cases raise a TypeError / ValueError / FileNotFoundError (or subclass) naming the
field, file, row or argument; command-line cases print exactly one
``mugv-data: error: ...`` line and exit 2 (bad input), 1 (a failure during the work), 130
(Ctrl-C) or 143 (SIGTERM). A pickle payload planted in an official-layout latent never runs.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mugv_data import CurationConfig, Pipeline, curate, discover_inputs, import_official_csv
from mugv_data._video import write_video
from mugv_data.cli import main
from mugv_data.config import read_config_file
from mugv_data.synthetic import render_scene

NAN, INF = float("nan"), float("inf")

# ------------------------------------------------------------------------------ configs
CONFIG_CASES = [
    pytest.param({"default": {"sharpness": {"min": NAN}}}, ValueError,
                 r"^default\.sharpness\.min must be a finite number, got nan$", id="nan-threshold"),
    pytest.param({"default": {"motion": {"max": INF}}}, ValueError,
                 r"^default\.motion\.max must be a finite number, got inf$", id="inf-threshold"),
    pytest.param({"sources": {"web": {"sharpness": {"max": NAN}}}}, ValueError,
                 r"^sources\.web\.sharpness\.max must be a finite number", id="nan-per-source"),
    pytest.param({"default": {"sharpness": {"min": "abc"}}}, TypeError,
                 r"^default\.sharpness\.min must be a number, got 'abc' \(str\)$", id="str-number"),
    pytest.param({"default": {"sharpness": {"enabled": "no"}}}, TypeError,
                 r"sharpness\.enabled must be true or false, got 'no'", id="str-bool"),
    pytest.param({"extract_clips": 1}, TypeError,
                 r"^extract_clips must be true or false, got 1 \(int\)$", id="int-bool"),
    pytest.param({"workers": "2"}, TypeError, r"^workers must be an integer, got '2'", id="str-int"),
    pytest.param({"workers": 1.5}, TypeError, r"^workers must be an integer, got 1\.5", id="float-int"),
    pytest.param({"workers": 0}, ValueError, r"^workers must be >= 1, got 0$", id="workers-0"),
    pytest.param({"model_batch_size": 0}, ValueError, r"^model_batch_size must be >= 1", id="batch-0"),
    pytest.param({"default": {"motion": {"backend": "tvl1"}}}, ValueError,
                 r"^default\.motion\.backend must be 'farneback' or 'raft', got 'tvl1'$", id="enum-motion"),
    pytest.param({"default": {"captions": {"backend": "onnx"}}}, ValueError,
                 r"captions\.backend must be 'transformers' or 'vllm', got 'onnx'", id="enum-vlm"),
    pytest.param({"default": {"captions": {"on_unparsable": "maybe"}}}, ValueError,
                 r"on_unparsable must be 'drop' or 'keep', got 'maybe'", id="enum-unparsable"),
    pytest.param({"default": {"motion": {"backend": "raft"}}}, ValueError,
                 r"needs motion\.raft_weights", id="raft-no-weights"),
    pytest.param({"default": {"motion": {"max_side": 2}}}, ValueError,
                 r"^default\.motion\.max_side must be >= 8, got 2$", id="max-side"),
    pytest.param({"default": {"sharpness": {"num_frames": 0}}}, ValueError,
                 r"^default\.sharpness\.num_frames must be >= 1, got 0$", id="frames-0"),
    pytest.param({"default": {"sharpness": {"min": 10, "max": 1}}}, ValueError,
                 r"min \(10\) must not exceed max \(1\)", id="min-gt-max"),
    pytest.param({"default": {"scenes": {"gradual_threshold": 2}}}, ValueError,
                 r"^default\.scenes\.gradual_threshold must be in \[0, 1\], got 2$", id="gradual-range"),
    pytest.param({"default": {"scenes": {"min_clip_s": 0}}}, ValueError,
                 r"^default\.scenes\.min_clip_s must be > 0$", id="min-clip-0"),
    pytest.param({"default": {"scenes": {"analysis_max_side": 4}}}, ValueError,
                 r"analysis_max_side must be >= 16, got 4", id="analysis-side"),
    pytest.param({"default": {"aesthetic": {"enabled": True}}}, ValueError,
                 r"needs aesthetic\.clip_model and aesthetic\.head_weights", id="aesthetic-no-model"),
    pytest.param({"dedup": {"max_distance": 65}}, ValueError,
                 r"^dedup\.max_distance must be in \[0, 64\] bits, got 65$", id="dedup-distance"),
    pytest.param({"dedup": {"max_duration_ratio": 0.5}}, ValueError,
                 r"max_duration_ratio must be >= 1, got 0\.5", id="dedup-ratio"),
    pytest.param({"balance": {"alpha": INF}}, ValueError,
                 r"^balance\.alpha must be a finite number, got inf$", id="alpha-inf"),
    pytest.param({"balance": {"alpha": -1}}, ValueError, r"balance\.alpha must be >= 0", id="alpha-neg"),
    pytest.param({"buckets": {"fps": NAN}}, ValueError,
                 r"^buckets\.fps must be a finite number, got nan$", id="fps-nan"),
    pytest.param({"buckets": {"fps": 0}}, ValueError, r"^buckets\.fps must be > 0, got 0$", id="fps-0"),
    pytest.param({"buckets": {"durations_s": [-1]}}, ValueError,
                 r"^buckets\.durations_s must all be > 0, got \[-1\]$", id="durations-neg"),
    pytest.param({"buckets": {"aspect_ratios": {"1:1": [0, -3]}}}, ValueError,
                 r"buckets\.aspect_ratios must all be > 0", id="aspect-neg"),
    pytest.param({"buckets": {"aspect_ratios": {"1:1": [16]}}}, ValueError,
                 r"buckets\.aspect_ratios\.1:1 must have 2 values, got \[16\]", id="aspect-len"),
    pytest.param({"buckets": {"resolutions": {"tiny": "big"}}}, TypeError,
                 r"buckets\.resolutions\.tiny must be a number, got 'big'", id="resolution-str"),
    pytest.param({"ray": {"model_gpus": -1}}, ValueError, r"model_gpus .* must be >= 0", id="ray-gpus"),
    pytest.param({"ray": {"videos_per_block": 0}}, ValueError, r"videos_per_block .* >= 1", id="ray-block"),
    pytest.param({"ray": {"address": 5}}, TypeError, r"^ray\.address must be a string, got 5", id="ray-address"),
    pytest.param({"video_extensions": "mp4"}, TypeError,
                 r"^video_extensions must be a list, got 'mp4'", id="extensions-str"),
    pytest.param({"video_extensions": ["mp4"]}, ValueError,
                 r"^video_extensions must start with '\.', got \['mp4'\]$", id="extensions-dot"),
    pytest.param({"preset": "zzz"}, ValueError, r"^unknown preset 'zzz'", id="preset"),
    pytest.param({"default": {"motion": {"mxa": 1}}}, ValueError,
                 r"unknown keys \['mxa'\] in 'default\.motion'", id="unknown-key"),
    pytest.param({"default": {"colour": {}}}, ValueError,
                 r"unknown sections \['colour'\] in 'default'", id="unknown-section"),
    pytest.param({"dedup": 3}, ValueError, r"config section 'dedup' must be a table/object, got 3",
                 id="section-not-object"),
    pytest.param({"sources": [1]}, TypeError, r"config section 'sources' must be a table/object",
                 id="sources-not-object"),
    pytest.param({"default": 3}, TypeError, r"config section 'default' must be a table/object",
                 id="default-not-object"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "error", "match"), CONFIG_CASES)
def test_config_rejects(overrides, error, match):
    with pytest.raises(error, match=match):
        CurationConfig.from_dict(overrides)


def test_config_rejects_non_objects_and_a_preset_beside_a_base():
    with pytest.raises(TypeError, match=r"must be a table/object, got \[1\] \(list\)"):
        CurationConfig.from_dict([1])
    with pytest.raises(ValueError, match=r"names preset 'paper' and a base config is given"):
        CurationConfig.from_dict({"preset": "paper"}, base=CurationConfig.preset("synthetic"))
    with pytest.raises(ValueError, match=r"unknown preset 'huge'"):
        CurationConfig.preset("huge")


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        pytest.param("c.json", b"{", ValueError, r"c\.json is not valid JSON", id="json"),
        pytest.param("c.json", b"[1]", ValueError, r"must hold a JSON object, got list", id="list"),
        pytest.param("c.toml", b"a = ", ValueError, r"c\.toml is not valid TOML", id="toml"),
        pytest.param(
            "c.json", b'{"a": "caf\xe9"}', ValueError, r"c\.json is not UTF-8 text", id="latin1"
        ),
        pytest.param(
            "c.yaml", b"a: 1", ValueError, r"must be \.json or \.toml, got c\.yaml", id="yaml"
        ),
        pytest.param(None, None, FileNotFoundError, r"config file not found", id="missing"),
    ],
)
def test_config_files_rejected(tmp_path, name, content, error, match):
    path = tmp_path / (name or "nope.json")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        read_config_file(path)
    with pytest.raises(error, match=match):
        CurationConfig.from_file(path)


# ------------------------------------------------------------------------------ inputs
MANIFEST_CASES = [
    pytest.param("m.csv", "path,caption\nv.mp4,caf\xe9\n".encode("latin-1"), ValueError,
                 r"m\.csv is not UTF-8 text \(invalid continuation byte at byte \d+\); re-save",
                 id="csv-latin1"),
    pytest.param("m.csv", b"", ValueError, r"m\.csv is empty \(need a header", id="csv-empty"),
    pytest.param("m.csv", b"path,caption\n", ValueError, r"m\.csv: the manifest has no rows",
                 id="csv-header-only"),
    pytest.param("m.csv", b"file,caption\nv.mp4,x\n", ValueError,
                 r"m\.csv: row 0 has no 'path' column", id="csv-no-path"),
    pytest.param("m.csv", b"path,caption\n,x\n", ValueError, r"m\.csv: row 0 has an empty path",
                 id="csv-empty-path"),
    pytest.param("m.jsonl", b'{"path": "v.mp4"}\n{bad\n', ValueError,
                 r"m\.jsonl: line 2 is not JSON", id="jsonl-bad-line"),
    pytest.param("m.jsonl", b"[1, 2]\n", ValueError,
                 r"m\.jsonl: line 1 must be a JSON object with a 'path', got list", id="jsonl-list"),
    pytest.param("m.jsonl", b'{"path": "v.mp4", "caption": "caf\xe9"}\n', ValueError,
                 r"m\.jsonl is not UTF-8 text \(line 1", id="jsonl-latin1"),
    pytest.param("m.jsonl", b'{"path": 3}\n', ValueError, r"m\.jsonl: row 0: path must be text, got int",
                 id="jsonl-int-path"),
    pytest.param("m.parquet", b"PAR1garbage", ValueError, r"m\.parquet is not a readable parquet manifest",
                 id="parquet-garbage"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "error", "match"), MANIFEST_CASES)
def test_input_manifests_rejected(tmp_path, name, content, error, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=match):
        discover_inputs(tmp_path / name, CurationConfig())


def test_csv_captions_stay_text_and_a_byte_order_mark_is_fine(tmp_path):
    (tmp_path / "m.csv").write_bytes("\ufeffpath,caption\nv.mp4,123\nw.mp4,café\n".encode())
    items = discover_inputs(tmp_path / "m.csv", CurationConfig())
    assert sorted(i.caption for i in items) == ["123", "café"]


def test_missing_inputs_and_outputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input not found: .*nope"):
        discover_inputs(tmp_path / "nope", CurationConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no video files \(.*\) under .*empty"):
        discover_inputs(tmp_path / "empty", CurationConfig())
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"output .*file is a file; give a folder"):
        curate(tmp_path / "empty", tmp_path / "file")
    with pytest.raises(ValueError, match=r"engine must be 'local' or 'ray', got 'spark'"):
        Pipeline(engine="spark")


def test_vllm_backend_missing_is_one_clear_error(monkeypatch):
    import sys

    from mugv_data.stages.vlm import _import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    with pytest.raises(
        ImportError, match=r"captions\.backend='vllm' needs vLLM .*pip install vllm"
    ):
        _import_vllm()


# ----------------------------------------------------------------------- official CSV
class Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _official(tmp_path, latent_bytes: bytes | None):
    import torch

    (tmp_path / "latents").mkdir()
    (tmp_path / "text").mkdir()
    if latent_bytes is None:
        torch.save(torch.zeros(24, 2, 2, 2), tmp_path / "latents" / "a.pt")
    else:
        (tmp_path / "latents" / "a.pt").write_bytes(latent_bytes)
    torch.save({"y": torch.zeros(1, 1, 3, 8), "mask": torch.ones(1, 3)}, tmp_path / "text" / "a.pt")
    csv = tmp_path / "train.csv"
    csv.write_text("sample_id,source,latent_path,text_feat_path\na,real,latents/a.pt,text/a.pt\n")
    return csv


def test_official_csv_rejects(tmp_path):
    csv = _official(tmp_path, None)
    with pytest.raises(ValueError, match=r"shard_size must be an integer >= 1, got 0"):
        import_official_csv(csv, tmp_path / "o", shard_size=0)
    (tmp_path / "latin.csv").write_bytes("sample_id,caption\na,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text"):
        import_official_csv(tmp_path / "latin.csv", tmp_path / "o")
    (tmp_path / "cols.csv").write_text("sample_id,source\n")
    with pytest.raises(
        ValueError, match=r"cols\.csv lacks columns \['latent_path', 'text_feat_path'\]"
    ):
        import_official_csv(tmp_path / "cols.csv", tmp_path / "o")
    (tmp_path / "latents" / "a.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"latents/a\.pt \(named in the CSV\) not found"):
        import_official_csv(csv, tmp_path / "o")


def test_official_latent_with_a_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(Payload(str(marker))))  # the payload works when unpickled ...
    assert marker.exists()
    marker.unlink()
    import torch

    buf = tmp_path / "p.pt"
    torch.save({"t": torch.zeros(2), "payload": Payload(str(marker))}, buf)
    csv = _official(tmp_path, buf.read_bytes())
    with pytest.raises(
        ValueError, match=r"a\.pt is not a torch tensor file of the official layout"
    ):
        import_official_csv(csv, tmp_path / "o")
    assert not marker.exists()  # ... and the loader never unpickled it


# ------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    video = write_video(d / "v.mp4", render_scene(12, 48, 64, seed=1), 24.0)
    (d / "latin.csv").write_bytes("path,caption\nv.mp4,caf\xe9\n".encode("latin-1"))
    (d / "nan.json").write_text(json.dumps({"default": {"sharpness": {"min": NAN}}}))
    (d / "syn.json").write_text(json.dumps({"preset": "synthetic"}))
    (d / "broken.json").write_text("{")
    (d / "file").write_text("x")
    curated = d / "curated"
    curated.mkdir()
    cols = ["clip_id", "status", "path", "bucket_frames", "bucket_height", "bucket_width"]
    pq.write_table(
        pa.table({c: pa.array([], pa.string()) for c in cols}), curated / "manifest.parquet"
    )
    return d, video, curated


CLI_CASES = [
    pytest.param(["curate", "{d}/nope", "--out", "{d}/o"], r"input not found: .*nope$", id="curate-missing"),
    pytest.param(["curate", "{d}/latin.csv", "--out", "{d}/o", "--quiet"],
                 r"latin\.csv is not UTF-8 text \(invalid continuation byte at byte \d+\)", id="curate-latin1-csv"),
    pytest.param(["curate", "{v}", "--out", "{d}/o", "--config", "{d}/nan.json"],
                 r"default\.sharpness\.min must be a finite number, got nan$", id="curate-nan-config"),
    pytest.param(["curate", "{v}", "--out", "{d}/o", "--config", "{d}/broken.json"],
                 r"broken\.json is not valid JSON", id="curate-broken-config"),
    pytest.param(["curate", "{v}", "--out", "{d}/o", "--config", "{d}/syn.json", "--preset", "paper"],
                 r"names preset 'synthetic' but --preset paper was given; drop one$", id="curate-preset-clash"),
    pytest.param(["curate", "{v}", "--out", "{d}/o", "--preset", "huge"],
                 r"argument --preset: invalid choice: 'huge'", id="curate-preset-choice"),
    pytest.param(["curate", "{v}", "--out", "{d}/o", "--workers", "0"], r"--workers must be >= 1, got 0$",
                 id="curate-workers-0"),
    pytest.param(["curate", "{v}", "--out", "{d}/o", "--workers", "two"],
                 r"argument --workers: invalid int value: 'two'", id="curate-workers-str"),
    pytest.param(["curate", "{v}", "--out", "{d}/file"], r"output .*file is a file; give a folder$",
                 id="curate-out-file"),
    pytest.param(["curate", "{v}"], r"the following arguments are required: --out", id="curate-no-out"),
    pytest.param(["curate", "{v}", "--out", "{d}/o", "--engine", "ray", "--ray-address", "127.0.0.1:1"],
                 r"cannot reach the Ray cluster at '127\.0\.0\.1:1'", id="curate-ray-unreachable"),
    pytest.param(["encode", "{d}/nope", "--vae", "preset:debug", "--text-encoder", "t"],
                 r"no curation manifest at .*nope/manifest\.parquet; run `mugv-data curate` first",
                 id="encode-missing"),
    pytest.param(["encode", "{c}", "--vae", "preset:debug", "--text-encoder", "t", "--shard-size", "0"],
                 r"--shard-size must be >= 1, got 0$", id="encode-shard-0"),
    pytest.param(["encode", "{c}", "--vae", "{d}/nope.pt", "--text-encoder", "t"],
                 r"--vae .*nope\.pt: no such folder or file$", id="encode-vae-missing"),
    pytest.param(["export-csv", "{d}/nope", "--out", "{d}/x", "--text-length", "0"],
                 r"--text-length must be >= 1, got 0$", id="export-text-length"),
    pytest.param(["export-csv", "{d}/nope", "--out", "{d}/x"], r"no manifest\.parquet at .*nope",
                 id="export-missing"),
    pytest.param(["import-csv", "{d}/latin.csv", "--out", "{d}/x"], r"latin\.csv is not UTF-8 text",
                 id="import-latin1"),
    pytest.param(["import-csv", "{d}/latin.csv", "--out", "{d}/x", "--shard-size", "0"],
                 r"--shard-size must be >= 1, got 0$", id="import-shard-0"),
    pytest.param(["stats", "{d}/nope"], r"no manifest\.parquet in .*nope; run `mugv-data curate` first",
                 id="stats-missing"),
    pytest.param(["inspect", "x", "--out", "{d}/nope"], r"no manifest\.parquet in .*nope", id="inspect-missing"),
    pytest.param(["shrink", "{d}"], r"argument command: invalid choice: 'shrink'", id="unknown-command"),
]  # fmt: skip


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mugv-data: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("argv", "match"), CLI_CASES)
def test_cli_bad_input_is_one_line_and_exit_2(files, argv, match, capsys, monkeypatch):
    d, video, curated = files
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MUGV_DEBUG", raising=False)
    rc = main([a.format(d=d, v=video, c=curated) for a in argv])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2, line
    assert re.search(match, line), line


@pytest.mark.parametrize(
    ("raised", "code", "match"),
    [
        pytest.param(
            RuntimeError("disk on fire"),
            1,
            r"error: RuntimeError: disk on fire$",
            id="failure-exit-1",
        ),
        pytest.param(
            KeyboardInterrupt(),
            130,
            r"error: interrupted; outputs written so far are "
            r"complete \(rerun to resume\)$",
            id="ctrl-c-130",
        ),
        pytest.param("SIGTERM", 143, r"error: terminated \(SIGTERM\)", id="sigterm-143"),
    ],
)
def test_cli_failures_interrupts_and_sigterm(files, raised, code, match, capsys, monkeypatch):
    d, video, _ = files

    def fake_curate(*args, **kwargs):
        if raised == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
        raise raised

    monkeypatch.setattr("mugv_data.pipeline.curate", fake_curate)
    previous = signal.getsignal(signal.SIGTERM)
    rc = main(["curate", str(video), "--out", str(d / "o"), "--quiet"])
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is restored
    line = _one_error_line(capsys.readouterr().err)
    assert rc == code and re.search(match, line), line


def test_cli_debug_shows_the_traceback(files):
    d, _, _ = files
    with pytest.raises(FileNotFoundError, match="input not found"):
        main(["curate", str(d / "nope"), "--out", str(d / "o"), "--debug"])

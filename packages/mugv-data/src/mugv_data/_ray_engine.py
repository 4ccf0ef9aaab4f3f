"""The Ray engine: the pipeline's per-video and per-clip stages as Ray Data operations.

    from_items(inputs) -> map(probe) -> map(scene split) -> flat_map(clips)
                       -> map(clip filters) -> groupby video on the driver

Rows carry JSON strings, so nested records cross Arrow blocks unchanged. The driver writes
each video's record (as the local engine does), so both engines resume from the same
files and, running the same stage functions, produce the same manifest. Uses the running
Ray instance if there is one, else starts a local one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mugv_data.config import CurationConfig
from mugv_data.pipeline import InputItem, Models, clip_stage, probe_stage, save_record, scene_stage


def _start_local_ray(ray, num_cpus: int, attempts: int = 3) -> None:
    # Ray gives its raylet a fixed 30 s to register; on an overloaded machine that can
    # time out, and a second attempt usually succeeds.
    for attempt in range(attempts):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise
            ray.shutdown()


def run_ray(
    todo: list[InputItem], cfg: CurationConfig, models: Models | None, out: Path
) -> Iterator[dict]:
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray engine needs `pip install mugv-data[ray]`") from None
    if not todo:
        return
    if not ray.is_initialized():
        _start_local_ray(ray, cfg.workers)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False

    def probe_op(row: dict) -> dict:
        item = InputItem(**json.loads(row["item"]))
        return {"key": item.key, "rec": json.dumps(probe_stage(item, cfg))}

    def scene_op(row: dict) -> dict:
        return {"key": row["key"], "rec": json.dumps(scene_stage(json.loads(row["rec"]), cfg))}

    def explode_op(row: dict) -> list[dict]:
        rec = json.loads(row["rec"])
        head = {**rec, "clips": []}
        out = [{"key": rec["key"], "kind": "video", "n": -1, "payload": json.dumps(head)}]
        for n, clip in enumerate(rec["clips"]):
            out.append({"key": rec["key"], "kind": "clip", "n": n, "payload": json.dumps(clip)})
        return out

    def clip_op(row: dict) -> dict:
        if row["kind"] == "clip":
            row = {
                **row,
                "payload": json.dumps(clip_stage(json.loads(row["payload"]), cfg, models)),
            }
        return row

    items = [{"item": json.dumps(i.__dict__)} for i in todo]
    ds = ray.data.from_items(items).map(probe_op).map(scene_op).flat_map(explode_op).map(clip_op)
    records: dict[str, dict] = {}
    clips: dict[str, list[tuple[int, dict]]] = {}
    for row in ds.iter_rows():
        if row["kind"] == "video":
            records[row["key"]] = json.loads(row["payload"])
        else:
            clips.setdefault(row["key"], []).append((int(row["n"]), json.loads(row["payload"])))
    for key in sorted(records):
        rec = records[key]
        rec["clips"] = [c for _, c in sorted(clips.get(key, []), key=lambda x: x[0])]
        save_record(out, rec)
        yield rec

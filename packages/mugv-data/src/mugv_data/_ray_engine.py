"""The Ray engine: the curation pipeline as one streaming Ray Data program.

    from_items(videos to do)                       blocks of ``ray.videos_per_block`` videos
      -> map_batches(cpu_stage)                    CPU tasks: probe, scene split, per-clip
                                                   decode + sharpness / motion / hashes
      -> map_batches(ModelStageActor,              only when a model stage is configured:
             concurrency=ray.model_actors,         class-based actors that load the models
             num_gpus=ray.model_gpus, ...)         once, on their own device, and batch clips
      -> iter_batches on the driver                each finished block's records written
                                                   (one file per video, atomic, fsynced)

Execution streams: blocks flow through the stages as they finish and the driver holds at
most a few blocks, so its memory does not grow with the dataset, and a killed run loses
only the blocks in flight (a rerun skips videos that have records). The stages are the
functions the local engine runs, so both engines write the same records and manifest.
Ray retries a failed CPU task and restarts a dead actor, re-running its block.

Cluster: ``ray.address`` or ``RAY_ADDRESS`` (checked to be reachable first, never a
silent local fallback), else a local Ray with ``ray.num_cpus`` (default ``workers``) CPUs;
a Ray already initialised in this process is used as it is. On a cluster, the inputs must
be readable at the same paths on every node; records are written by the driver.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mugv_data._model_stages import ModelLoadError, ModelRunner, Models, model_kinds
from mugv_data.config import CurationConfig, RayConfig
from mugv_data.pipeline import (
    InputItem,
    _stage_clips,
    clip_cpu_stage,
    probe_stage,
    save_record,
    scene_stage,
)


class RayClusterError(ConnectionError):
    """The Ray cluster named by ``ray.address`` / ``RAY_ADDRESS`` cannot be reached."""


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    if address == "auto":
        return  # Ray itself looks for a local cluster and says so if there is none
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise RayClusterError(
            f"Ray address {address!r} is not host:port (or ray://host:port, or auto)"
        ) from None
    try:
        with socket.create_connection((host or "127.0.0.1", port_n), timeout=timeout):
            pass
    except OSError as e:
        raise RayClusterError(
            f"cannot reach the Ray cluster at {address!r} ({e}); start it with "
            "`ray start --head`, fix ray.address / RAY_ADDRESS, or unset them to run on a "
            "local Ray"
        ) from None


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


def connect(ray_cfg: RayConfig, num_cpus: int) -> None:
    """Join ``ray_cfg.address`` / ``RAY_ADDRESS``, or start a local Ray (unless one is up)."""
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray engine needs `pip install mugv-data[ray]`") from None
    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise RayClusterError(f"cannot join the Ray cluster at {address!r}: {e}") from None
    else:
        _start_local_ray(ray, ray_cfg.num_cpus or num_cpus)


# -- stages ------------------------------------------------------------------------------


def _pack(frames: dict[str, np.ndarray]) -> bytes:
    if not frames:
        return b""
    buf = io.BytesIO()
    np.savez(buf, **frames)
    return buf.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    if not data:
        return {}
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def cpu_stage(batch: dict[str, np.ndarray], cfg: CurationConfig, given: Models | None) -> dict:
    """Probe, scene split and the clip CPU stage for a block of videos.

    Clips waiting for model stages carry their frame plan in the record (``_plans``) and
    their frames in the ``frames`` column (an ``.npz``, no pickles)."""
    import time

    out: dict[str, list] = {"key": [], "rec": [], "frames": [], "timing": []}
    for item_json in batch["item"]:
        item = InputItem(**json.loads(str(item_json)))
        t0 = time.perf_counter()
        rec = scene_stage(probe_stage(item, cfg), cfg)
        t1 = time.perf_counter()
        plans, frames = {}, {}
        clips = []
        for n, c in enumerate(rec["clips"]):
            c, plan, fr = clip_cpu_stage(c, cfg, model_kinds(cfg.for_source(c["source"]), given))
            clips.append(c)
            if c["status"] == "pending":
                plans[str(n)] = plan
                frames.update({f"{n}_{i}": f for i, f in fr.items()})
        rec["clips"] = clips
        if plans:
            rec["_plans"] = plans
        timing = {"probe_scenes": t1 - t0, "clip_cpu": time.perf_counter() - t1, "models": 0.0}
        out["key"].append(rec["key"])
        out["rec"].append(json.dumps(rec))
        out["frames"].append(_pack(frames))
        out["timing"].append(json.dumps(timing))
    return {k: np.array(v, dtype=object) for k, v in out.items()}


class ModelStageActor:
    """A Ray actor running the model stages: loads every configured model once, on its
    own device (the GPU Ray gave it, else CPU), then batches the clips of each block."""

    def __init__(self, cfg: CurationConfig, given: Models | None = None) -> None:
        self.runner = ModelRunner(cfg, given)
        sources = ["default", *cfg.sources]
        self.runner.load_all([s for s in sources if model_kinds(cfg.for_source(s), given)])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import time

        t0 = time.perf_counter()
        recs = [json.loads(str(r)) for r in batch["rec"]]
        items, where = [], []
        for v, (rec, data) in enumerate(zip(recs, batch["frames"])):
            frames = _unpack(bytes(data))
            for n, plan in rec.pop("_plans", {}).items():
                n = int(n)
                idx = (
                    set(plan["aesthetic"]) | set(plan["vlm"]) | {i for p in plan["raft"] for i in p}
                )
                fr = {i: frames[f"{n}_{i}"] for i in idx}
                items.append((rec["clips"][n], plan, fr))
                where.append((v, n))
        for (v, n), clip in zip(where, self.runner.run(items)):
            recs[v]["clips"][n] = clip
        dt = (time.perf_counter() - t0) / max(1, len(recs))
        timings = []
        for t in batch["timing"]:
            t = json.loads(str(t))
            t["models"] += dt
            timings.append(json.dumps(t))
        return {
            "key": batch["key"],
            "rec": np.array([json.dumps(r) for r in recs], dtype=object),
            "frames": np.array([b""] * len(recs), dtype=object),
            "timing": np.array(timings, dtype=object),
        }


def _model_load_error(e: BaseException) -> ModelLoadError | None:
    """The ``ModelLoadError`` behind a Ray error (actor construction failed), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ModelLoadError):
            return e
        e = e.__cause__ or getattr(e, "cause", None) or e.__context__
    return None


def _model_load_message(e: BaseException) -> str | None:
    marker = "ModelLoadError: "
    text = str(e)
    if marker not in text:
        return None
    return text.split(marker, 1)[1].strip().splitlines()[0]


def run_ray(
    todo: list[InputItem],
    cfg: CurationConfig,
    models: Models | None,
    out: Path,
    progress: bool = False,
) -> Iterator[dict]:
    """Run the per-video stages of ``todo`` on Ray; yields per-video stats as records land."""
    connect(cfg.ray, cfg.workers)
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    # A model that cannot load fails the run at once instead of being retried forever.
    ctx.max_consecutive_actor_init_deaths = 0
    rc = cfg.ray
    per_block = rc.videos_per_block
    rows = [{"item": json.dumps(i.__dict__)} for i in todo]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // per_block)))
    ds = ds.map_batches(
        cpu_stage,
        fn_kwargs={"cfg": cfg, "given": models},
        batch_size=per_block,
        batch_format="numpy",
        num_cpus=1,
    )
    sources = {"default", *cfg.sources}
    if any(model_kinds(cfg.for_source(s), models) for s in sources):
        remote = {"num_gpus": rc.model_gpus} if rc.model_gpus else {}
        ds = ds.map_batches(
            ModelStageActor,
            fn_constructor_kwargs={"cfg": cfg, "given": models},
            concurrency=rc.model_actors,
            batch_size=per_block,
            batch_format="numpy",
            num_cpus=rc.model_cpus,
            **remote,
        )
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            for rec_json, timing in zip(batch["rec"], batch["timing"]):
                rec = json.loads(str(rec_json))
                save_record(out, rec)
                yield _stage_clips(json.loads(str(timing)), rec)
    except Exception as e:
        err = _model_load_error(e)
        msg = str(err) if err is not None else _model_load_message(e)
        if msg is not None:
            raise ModelLoadError(msg) from None
        raise

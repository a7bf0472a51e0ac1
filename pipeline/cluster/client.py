"""Starting, finding and stopping a vidpipe cluster from a Ray driver (the CLI, or Python).

The driver only submits: the assignment lives in Redis and in the detached coordinator
actor, so a driver that exits (or is killed) leaves the cluster running.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from engines.errors import ConfigError
from pipeline.cluster import COORDINATOR, NAMESPACE, require_ray
from pipeline.cluster.streams import ClusterState
from pipeline.config import RunConfig, SourceConfig
from pipeline.sinks.redis.entries import connect
from stages.redact import redact_url
from stages.source import url_scheme

HEAD_NODE = "node:__internal_head__"  # a resource only the head node has (ray._common.constants)


def connect_ray(address: str | None, start_local: bool = False) -> Any:
    """Join the Ray cluster at `address` ("auto": the one on this machine).

    With no address and no cluster running, `start_local` starts one here with
    `ray start --head`, which outlives this process (as the cluster must).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs = dict(namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    try:
        ray.init(address=address or "auto", **kwargs)
    except ConnectionError:
        if address not in (None, "auto") or not start_local:
            raise ConfigError(
                f"no Ray cluster at {address or 'this machine'}; start one with `ray start --head` "
                "or pass --ray HOST:PORT"
            ) from None
        ray_cli = Path(sys.executable).with_name("ray")
        started = subprocess.run(
            [str(ray_cli), "start", "--head", "--include-dashboard=false", "--disable-usage-stats"],
            capture_output=True, text=True,
        )  # fmt: skip
        if started.returncode != 0:
            lines = (started.stderr or started.stdout).strip().splitlines()
            raise ConfigError(
                f"could not start a local Ray cluster ({lines[-1] if lines else 'ray start failed'}); "
                "start one with `ray start --head --port PORT` and pass --ray auto"
            )
        ray.init(address="auto", **kwargs)
    return ray


def coordinator() -> Any:
    """The running cluster's coordinator actor, or ConfigError."""
    ray = require_ray()
    try:
        return ray.get_actor(COORDINATOR, namespace=NAMESPACE)
    except ValueError:
        raise ConfigError("no vidpipe cluster is running; start one with vidpipe cluster --config FILE") from None


def worker_options(resources: dict[str, float], worker_cpus: float, per_gpu: int = 1) -> tuple[int, dict[str, Any]]:
    """How many workers a cluster of `resources` (Ray's `cluster_resources()`) holds and each
    one's Ray resources: `per_gpu` per GPU, each with that fraction of it, else one per
    `worker_cpus` CPUs. Several processes per GPU are how one GPU is fed past what one Python
    process can drive: on the H200, two vidpipe processes of 8 sources each gave 1,581 fps
    together, one process of 16 sources 670-1,061 (samples/gpu_bench.py procs2, issue 12)."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus * per_gpu, {"num_gpus": 1 / per_gpu, "num_cpus": worker_cpus}
    return max(1, int(resources.get("CPU", 1) // worker_cpus)), {"num_cpus": worker_cpus}


def start_cluster(
    config: RunConfig, workers: int | None = None, worker_cpus: float = 1.0, workers_per_gpu: int = 1
) -> Any:
    """Register the config's sources in Redis and start the coordinator (which starts the
    workers, sized by `worker_options`). Needs connect_ray first. ConfigError when a cluster
    already runs."""
    ray = require_ray()
    if config.outputs.redis is None:
        raise ConfigError(
            "vidpipe cluster publishes to Redis Streams: give outputs.redis.url in the config or --redis URL"
        )
    try:
        ray.get_actor(COORDINATOR, namespace=NAMESPACE)
        raise ConfigError("a vidpipe cluster is running already; vidpipe cluster stop ends it")
    except ValueError:
        pass
    from pipeline.api import source_configs
    from pipeline.cluster.coordinator import Coordinator, register_source

    client = connect(config.outputs.redis.url)
    try:
        state = ClusterState(client)
        state.reset()
        for src in map(on_every_node, source_configs(config)):
            register_source(state, config.outputs.redis.key_prefix, src)
    except redis.RedisError as err:
        url = redact_url(config.outputs.redis.url)
        raise ConfigError(f"redis {url}: unreachable ({err}); start Redis or fix the URL") from None
    finally:
        client.close()
    count, options = worker_options(ray.cluster_resources(), worker_cpus, workers_per_gpu)
    # On the head node, as Ray's own state actors are: it does not go down with a worker node.
    actor = ray.remote(Coordinator).options(
        name=COORDINATOR, namespace=NAMESPACE, lifetime="detached", max_restarts=-1, max_concurrency=16, num_cpus=0,
        resources={HEAD_NODE: 0.001},
    )
    handle = actor.remote(config.model_dump_json(), workers or count, options)
    ray.get(handle.pid.remote())
    return handle


def on_every_node(src: SourceConfig) -> SourceConfig:
    """A file source with an absolute path: workers do not run in this directory."""
    if url_scheme(src.url) is not None:
        return src  # a URL: the same on every node
    path = Path(src.url)
    if not path.exists():
        raise ConfigError(f"{src.url}: no such file; check the path")
    return src.model_copy(update={"url": str(path.resolve())})


def add_source(src: SourceConfig) -> str:
    """Add a source to the running cluster; its name. ConfigError if the name is taken."""
    ray = require_ray()
    src = on_every_node(src)
    name, error = ray.get(coordinator().add.remote(src.model_dump_json()))
    if error:
        raise ConfigError(error)
    return name


def remove_source(name: str) -> None:
    """Stop a source on its worker (frames in flight are published) and forget it."""
    ray = require_ray()
    if not ray.get(coordinator().remove.remote(name)):
        raise ConfigError(f"no source {name!r} in the cluster; vidpipe cluster status lists them")


def status() -> dict[str, Any]:
    """Per source: worker, state, fps, the segment's ledger, moves; per worker: alive, pid."""
    ray = require_ray()
    return ray.get(coordinator().status.remote())


def ledger() -> dict[str, dict[str, Any]]:
    """The cluster-wide ledger, per source, counted from its stream (streams.StreamLedger)."""
    ray = require_ray()
    return ray.get(coordinator().ledger.remote())


def wait_finished(poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
    """Wait until every source has ended (file sources); the last status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        current = status()
        if current["finished"] or (deadline is not None and time.monotonic() > deadline):
            return current
        time.sleep(poll_s)


def stop_cluster() -> None:
    """Stop every source (frames in flight are published), the workers and the coordinator."""
    ray = require_ray()
    handle = coordinator()
    ray.get(handle.shutdown.remote())
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the name is free once the actor is gone
        try:
            ray.get_actor(COORDINATOR, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.2)

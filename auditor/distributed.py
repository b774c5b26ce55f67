"""``--engine ray``: the same chunks, scored by a pool of Ray actors.

The driver reads the dataset with persona-audit's own readers (they keep exact
file:line positions and reject reasons), looks up samples an earlier complete run already
scored (incremental scans), tokenizes the rest, looks up cached base responses in the
database, and hands the chunk to an actor. Each actor loads the model
once and runs :class:`auditor.pipeline.ChunkScorer`, the code the local engine runs, on
exactly the same chunks; so results are identical to a local scan. The driver commits
every returned chunk (scores, rejects and newly generated base responses) to the
database, so the base-response cache is shared by all workers through the driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from auditor.errors import AuditorError, MissingDependency


def _require_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "ray", "--engine ray") from None
    return ray


def _scorer_actor(ray: Any):
    @ray.remote
    class ScorerActor:
        """Loads the model once; scores chunks and heat-map rows on request."""

        def __init__(self, config_fields: dict[str, Any], threads: int):
            import torch

            from auditor.model import load_model
            from auditor.pipeline import ChunkScorer, ScanConfig, scan_vectors

            if threads > 0:
                torch.set_num_threads(threads)
            self.config = ScanConfig(**config_fields)
            self.lm = load_model(
                self.config.model,
                dtype=self.config.dtype,
                device=self.config.device,
                trust_remote_code=self.config.trust_remote_code,
                layers_path=self.config.layers_path,
            )
            self.vectors = scan_vectors(self.config, self.lm)
            self.scorer = ChunkScorer(self.config, self.lm, self.vectors, run_id="")

        def describe(self) -> dict[str, Any]:
            lm = self.lm
            return {
                "name": lm.name,
                "fingerprint": lm.fingerprint,
                "num_layers": lm.num_layers,
                "hidden_size": lm.hidden_size,
                "dtype": lm.dtype,
                "device": lm.device,
                "source": lm.source,
                "max_length": lm.max_length,
                "path": lm.path,
            }

        def score_group(self, run_id: str, group: list):
            self.scorer.run_id = run_id
            return self.scorer.score_group(group)

        def token_values(self, rows: list):
            from auditor.pipeline import LocalExecutor

            return LocalExecutor(self.scorer).token_values(rows)

    return ScorerActor


class RayExecutor:
    """Hands each group of chunks to a free actor; the driver commits what comes back (``auditor.pipeline.run_chunks``)."""

    def __init__(self, ray: Any, actors: list[Any], run_id: str):
        self.ray, self.actors, self.run_id = ray, actors, run_id
        self._in_flight: dict[Any, Any] = {}  # object ref -> the actor computing it
        self._idle = list(actors)
        self._finished: list[Any] = []

    def submit(self, group: list[Any]) -> None:
        if not self._idle:
            self._collect(until=len(self.actors) - 1)  # wait for a free actor
        actor = self._idle.pop()
        self._in_flight[actor.score_group.remote(self.run_id, group)] = actor

    def _collect(self, until: int) -> None:
        while len(self._in_flight) > until:
            ready, _ = self.ray.wait(list(self._in_flight), num_returns=1)
            self._idle.append(self._in_flight.pop(ready[0]))
            self._finished.extend(self.ray.get(ready[0]))

    def finished(self) -> list[Any]:
        out, self._finished = self._finished, []
        return out

    def drain(self) -> list[Any]:
        self._collect(until=0)
        return self.finished()

    def token_values(self, rows: list[Any]) -> list[Any]:
        return self.ray.get(self.actors[0].token_values.remote(rows))


def scan_run_ray(
    config: Any,
    workers: int = 2,
    num_gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    ray_address: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
):
    """Scan with ``workers`` Ray actors; returns the same ScanResult as the local engine."""
    from auditor.pipeline import execute_scan, resolve_pairs
    from auditor.sources import expand_paths

    ray = _require_ray()
    config.validate()
    expand_paths(config.source)
    resolve_pairs(config)  # before the actors get the config: they must score pairs too
    if workers < 1:
        raise AuditorError("--workers must be at least 1")
    started = time.perf_counter()
    fields = actor_fields(config, num_gpus_per_worker)
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(int(workers * cpus_per_worker), 1), include_dashboard=False, log_to_driver=False)
    Actor = _scorer_actor(ray)
    actors = [Actor.options(num_cpus=cpus_per_worker, num_gpus=num_gpus_per_worker).remote(fields, max(int(cpus_per_worker), 1)) for _ in range(workers)]
    lm, vectors = driver_model(ray.get(actors[0].describe.remote()), fields, config)
    run_config = replace(config, vectors=fields["vectors"], model=fields["model"])
    timings = {"load_model": 0.0, "generate": 0.0, "forward": 0.0, "write": 0.0}
    return execute_scan(run_config, lm, vectors, lambda scorer, run_id: RayExecutor(ray, actors, run_id), started, timings, progress)


def actor_fields(config: Any, num_gpus_per_worker: float) -> dict[str, Any]:
    """The config as the actors get it: absolute paths (they may run elsewhere in the cluster), cuda when they hold GPUs."""
    fields = asdict(config)
    if config.model and os.path.exists(config.model):
        fields["model"] = os.path.abspath(config.model)
    fields["vectors"] = os.path.abspath(config.vectors) if config.vectors else None
    if num_gpus_per_worker > 0 and config.device == "auto":
        fields["device"] = "cuda"
    return fields


def driver_model(info: dict[str, Any], fields: dict[str, Any], config: Any) -> tuple[Any, list[Any]]:
    """The driver's side of the model: the tokenizer and what the actors report (enough to prepare chunks
    and look up the cache), and the vectors checked against it."""
    from auditor.model.loading import LoadedModel, load_tokenizer
    from auditor.pipeline import scan_vectors

    lm = LoadedModel(model=None, tokenizer=load_tokenizer(fields["model"], config.trust_remote_code), **info)
    vectors = scan_vectors(replace(config, vectors=fields["vectors"]), lm)
    return lm, vectors

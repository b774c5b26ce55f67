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
            from auditor.pipeline import ChunkScorer, ScanConfig
            from auditor.vectors import load_vectors

            if threads > 0:
                torch.set_num_threads(threads)
            self.config = ScanConfig(**config_fields)
            self.lm = load_model(self.config.model, dtype=self.config.dtype, device=self.config.device, trust_remote_code=self.config.trust_remote_code)
            self.vectors = load_vectors(
                self.config.vectors,
                self.lm.name,
                traits=self.config.traits,
                layers=self.config.layers,
                num_layers=self.lm.num_layers,
                hidden_size=self.lm.hidden_size,
                fingerprint=self.lm.fingerprint,
            )
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

        def score(self, run_id: str, index: int, items: list, cached: dict, prepared: tuple, reused: dict):
            self.scorer.run_id = run_id
            return self.scorer.score(index, items, cached, prepared=prepared, reused=reused)

        def token_values(self, rows: list):
            from auditor.scoring import score_rows

            return score_rows(
                self.lm.model,
                rows,
                self.scorer.directions,
                self.lm.tokenizer.pad_token_id,
                self.scorer.batch_tokens,
                [True] * len(rows),
                self.config.layers_path,
            )

    return ScorerActor


def scan_run_ray(
    config: Any,
    workers: int = 2,
    num_gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    ray_address: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
):
    """Scan with ``workers`` Ray actors; returns the same ScanResult as the local engine."""
    from auditor.model.loading import LoadedModel, load_tokenizer
    from auditor.pipeline import (
        ChunkScorer,
        add_counts,
        commit_chunk,
        finalize_run,
        lookup_base,
        lookup_reused,
        mark_run,
        new_counts,
        open_run,
        pending_chunks,
        resolve_pairs,
    )
    from auditor.sources import expand_paths
    from auditor.vectors import load_vectors
    from auditor.vectors.persona import default_vectors_dir

    ray = _require_ray()
    config.validate()
    expand_paths(config.source)
    resolve_pairs(config)  # before the actors get the config: they must score pairs too
    if workers < 1:
        raise AuditorError("--workers must be at least 1")
    started = time.perf_counter()
    # Actors may run elsewhere in the cluster: hand them absolute paths.
    fields = asdict(config)
    if config.model and os.path.exists(config.model):
        fields["model"] = os.path.abspath(config.model)
    fields["vectors"] = os.path.abspath(config.vectors) if config.vectors else None
    if num_gpus_per_worker > 0 and config.device == "auto":
        fields["device"] = "cuda"
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(int(workers * cpus_per_worker), 1), include_dashboard=False, log_to_driver=False)
    Actor = _scorer_actor(ray)
    actors = [Actor.options(num_cpus=cpus_per_worker, num_gpus=num_gpus_per_worker).remote(fields, max(int(cpus_per_worker), 1)) for _ in range(workers)]
    info = ray.get(actors[0].describe.remote())
    # The driver holds only the tokenizer: enough to prepare chunks and look up the cache.
    lm = LoadedModel(
        model=None,
        tokenizer=load_tokenizer(fields["model"], config.trust_remote_code),
        name=info["name"],
        fingerprint=info["fingerprint"],
        num_layers=info["num_layers"],
        hidden_size=info["hidden_size"],
        dtype=info["dtype"],
        device=info["device"],
        source=info["source"],
        max_length=info["max_length"],
        path=info["path"],
    )
    vectors = load_vectors(
        fields["vectors"] or str(default_vectors_dir(lm.name)),
        lm.name,
        traits=config.traits,
        layers=config.layers,
        num_layers=lm.num_layers,
        hidden_size=lm.hidden_size,
        fingerprint=lm.fingerprint,
    )
    run_config = replace(config, vectors=fields["vectors"], model=fields["model"])
    scorer = ChunkScorer(run_config, lm, vectors, run_id="")
    run_id, out_dir, done = open_run(run_config, lm, vectors, scorer)
    parts_dir = os.path.join(out_dir, "parts")
    counts = new_counts()
    timings = {"load_model": 0.0, "generate": 0.0, "forward": 0.0, "write": 0.0}
    in_flight: dict[Any, int] = {}
    idle = list(actors)

    def collect(block_until: int) -> None:
        while len(in_flight) > block_until:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            actor_index = in_flight.pop(ref)
            idle.append(actors[actor_index])
            out = ray.get(ref)
            t0 = time.perf_counter()
            commit_chunk(run_config.db, run_id, parts_dir, out)
            timings["write"] += time.perf_counter() - t0
            timings["generate"] += out.seconds["generate"]
            timings["forward"] += out.seconds["forward"]
            add_counts(counts, out)
            if progress:
                progress(dict(counts))

    try:
        for index, items in pending_chunks(run_config, run_id, done):
            reused = lookup_reused(run_config.db, scorer, items)
            prepared = scorer.prepare(items, skip=set(reused))
            if prepared[1] and run_config.on_error == "fail":
                first = prepared[1][0]
                raise first.error or AuditorError(first.reason)
            cached = (
                lookup_base(run_config.db, lm.fingerprint, scorer.settings_key, scorer.prompt_hashes(prepared[0])) if run_config.baseline == "generate" else {}
            )
            collect(block_until=len(actors) - 1)  # wait for a free actor
            actor = idle.pop()
            in_flight[actor.score.remote(run_id, index, items, cached, prepared, reused)] = actors.index(actor)
        collect(block_until=0)
    except BaseException as exc:
        mark_run(run_config, run_id, exc)
        raise
    score_fn = lambda rows: ray.get(actors[0].token_values.remote(rows))  # noqa: E731
    return finalize_run(
        run_config,
        run_id,
        out_dir,
        lm=lm,
        vectors=vectors,
        scorer=scorer,
        started=started,
        timings=timings,
        counts=counts,
        resumed=len(done),
        score_fn=score_fn,
    )

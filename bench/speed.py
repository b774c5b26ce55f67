#!/usr/bin/env python3
"""Throughput: persona-audit's scanner against the published method, in one run (issue 7).

On the same machine, model, data and vector, this times

- the baseline ``bench/reference_scan.py`` (the published method one sample at a time, the whole model
  with ``output_hidden_states=True``, base responses from ``model.generate`` one prompt at
  a time), and
- ``audit scan`` (length-bucketed batches, the forward stopped at the vector's layer, no
  logits, batched greedy decoding with a KV cache),

for three jobs: projection only (``--baseline none``, tokens/s), the full projection
difference (``--baseline generate``, samples/s) and ``--baseline prompt-last`` (samples/s,
against the baseline's projection-only pass: the published method computes the last prompt
token's projection from the same single forward). Each job runs in its own process, so its
peak resident memory (``ru_maxrss``) is its own. Throughput excludes loading the model for
both sides (the baseline starts its clock after loading; for the scanner the run's stored
``load_model`` time is subtracted), and includes everything else the scanner does: reading,
tokenizing, writing Parquet and DuckDB, the heat-map pass.

Scaling: projection-only scans of ``--scaling`` sample counts (default 1,000 and 10,000) of
short chats (one-paragraph answers, so that 10,000 fit in minutes on 2 cores), peak memory
and seconds per sample for each.

Agreement: the baseline prints its first five scores; the scanner's scores of the same
samples are compared with them (both bf16; greedy generations in bf16 may take another
token somewhere, so the generate job's agreement is reported, not asserted: the test suite
checks every fast path against the plain computation).

Data: ``bench/data.py`` (synthetic chats with answers of several hundred tokens).

    python bench/speed.py [--proj-samples 320] [--gen-samples 48] [--scaling 1000,10000] [--out bench/results/speed.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
REFERENCE = ROOT / "bench" / "reference_scan.py"
TRAIT = "sycophancy"
AUDIT = [sys.executable, "-c", "import sys; from auditor.cli import main; sys.argv[0] = 'audit'; main()"]


def run_measured(cmd: list[str], log: Path) -> tuple[str, float, int]:
    """Run ``cmd`` to completion -> (stdout, wall seconds, peak RSS of that process in MiB)."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        out = proc.stdout.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed with exit code {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
    return out, wall, usage.ru_maxrss // 1024  # Linux: KiB


def reference(data: Path, vector_pt: Path, layer: int, max_new_tokens: int, base: bool, work: Path, name: str) -> dict:
    cmd = [sys.executable, str(REFERENCE), str(data), str(vector_pt), str(layer), "--max-new-tokens", str(max_new_tokens)]
    if not base:
        cmd.append("--no-base")
    out, wall, rss = run_measured(cmd, work / f"{name}.log")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_rss_mib=rss, wall_seconds=round(wall, 2))
    return result


def scanner(data: Path, baseline: str, max_new_tokens: int, work: Path, name: str, extra: list[str] | None = None) -> dict:
    import duckdb

    db, out_dir = work / f"{name}.duckdb", work / name
    cmd = [
        *AUDIT,
        "scan",
        str(data),
        "--traits",
        TRAIT,
        "--baseline",
        baseline,
        "--max-new-tokens",
        str(max_new_tokens),
        "--db",
        str(db),
        "--out",
        str(out_dir),
        "--no-report",
        "--quiet",
        "--threshold",
        f"{TRAIT}=1e9",
        *(extra or []),
    ]
    _out, wall, rss = run_measured(cmd, work / f"{name}.log")
    con = duckdb.connect(str(db), read_only=True)
    timings, n_scored, dtype = con.execute("SELECT timings, n_scored, dtype FROM runs").fetchone()
    tokens = con.execute("SELECT sum(tokens) FROM run_chunks").fetchone()[0]
    col = "delta" if baseline != "none" else "proj_response"
    first = [
        v
        for (v,) in con.execute(
            f"SELECT {col} FROM scores ORDER BY (SELECT line FROM samples s WHERE s.sample_id = scores.sample_id AND s.run_id = scores.run_id) LIMIT 5"
        ).fetchall()
    ]
    con.close()
    timings = json.loads(timings)
    seconds = timings["total"] - timings.get("load_model", 0.0)
    return {
        "samples": int(n_scored),
        "tokens": int(tokens),
        "seconds": round(seconds, 2),
        "dtype": dtype,
        "samples_per_s": round(n_scored / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "first_scores": [round(x, 4) for x in first],
        "peak_rss_mib": rss,
        "wall_seconds": round(wall, 2),
    }


def versions() -> dict:
    import duckdb
    import torch
    import transformers

    from auditor import __version__

    return {
        "persona_audit": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "duckdb": duckdb.__version__,
        "python": platform.python_version(),
    }


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proj-samples", type=int, default=320, help="Chats for the projection-only and prompt-last jobs.")
    ap.add_argument("--gen-samples", type=int, default=48, help="Chats for the full projection difference (the baseline takes ~6 s each).")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="Base response cap, the same for both sides.")
    ap.add_argument("--scaling", default="1000,10000", help="Sample counts for the memory/linearity check ('' to skip).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed.json"))
    a = ap.parse_args(argv)

    import data as bench_data
    import torch

    from auditor.vectors import load_vectors

    pv = load_vectors(None, "SmolLM2-135M-Instruct", traits=[TRAIT])[0]
    results: dict = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "trait": TRAIT,
        "layer": pv.layer,
        "max_new_tokens": a.max_new_tokens,
        "data": "bench/data.py (seed 0)",
        "jobs": {},
    }
    with tempfile.TemporaryDirectory(prefix="persona-audit-bench-") as tmp:
        work = Path(tmp)
        vector_pt = work / f"{TRAIT}.pt"
        torch.save(pv.vector.float().contiguous(), vector_pt)
        proj_data = Path(bench_data.write(str(work / "proj.jsonl"), a.proj_samples, seed=0))
        gen_data = Path(bench_data.write(str(work / "gen.jsonl"), a.gen_samples, seed=1))

        jobs = [
            ("projection", proj_data, "none", False, "tokens_per_s", []),
            ("prompt_last", proj_data, "prompt-last", False, "samples_per_s", []),
            # The default: scoring in bf16, base responses decoded in float32 (batch-invariant).
            ("projection_difference", gen_data, "generate", True, "samples_per_s", []),
            # The same with bf16 decoding, as the baseline does: faster, but not batch-invariant.
            ("projection_difference_bf16_decoding", gen_data, "generate", True, "samples_per_s", ["--generation-dtype", "bfloat16"]),
        ]
        ref_cache: dict[str, dict] = {}
        for name, path, baseline, with_base, unit, extra in jobs:
            key = f"{path.name}:{with_base}"
            if key not in ref_cache:
                print(f"[{name}] baseline: reference_scan.py on {path.name} ...", file=sys.stderr, flush=True)
                ref_cache[key] = reference(path, vector_pt, pv.layer, a.max_new_tokens, with_base, work, f"ref-{name}")
            ref = ref_cache[key]
            print(f"[{name}] persona-audit: audit scan --baseline {baseline} {' '.join(extra)}...", file=sys.stderr, flush=True)
            ours = scanner(path, baseline, a.max_new_tokens, work, f"scan-{name}", extra)
            ratio = ours[unit] / ref[unit]
            agree = max(abs(x - y) for x, y in zip(ours["first_scores"], ref["first_scores"])) if baseline != "prompt-last" else None
            results["jobs"][name] = {
                "unit": unit,
                "baseline": ref,
                "persona_audit": ours,
                "ratio": round(ratio, 2),
                "max_abs_diff_first_scores": None if agree is None else round(agree, 4),
            }
            print(
                f"[{name}] {unit}: reference {ref[unit]:,} vs persona-audit {ours[unit]:,} -> {ratio:.1f}x; "
                f"peak RSS {ref['peak_rss_mib']} vs {ours['peak_rss_mib']} MiB",
                file=sys.stderr,
                flush=True,
            )

        counts = [int(x) for x in a.scaling.split(",") if x.strip()]
        if counts:
            results["scaling"] = []
            for n in counts:
                path = Path(bench_data.write(str(work / f"scale-{n}.jsonl"), n, seed=2, short=True))
                print(f"[scaling] audit scan --baseline none on {n:,} chats ...", file=sys.stderr, flush=True)
                ours = scanner(path, "none", a.max_new_tokens, work, f"scale-{n}")
                results["scaling"].append(
                    {
                        "samples": n,
                        "seconds": ours["seconds"],
                        "seconds_per_1k": round(1000 * ours["seconds"] / n, 2),
                        "tokens_per_s": ours["tokens_per_s"],
                        "peak_rss_mib": ours["peak_rss_mib"],
                    }
                )
                print(
                    f"[scaling] {n:,}: {ours['seconds']:.1f} s, {ours['tokens_per_s']:,} tok/s, peak RSS {ours['peak_rss_mib']} MiB",
                    file=sys.stderr,
                    flush=True,
                )
                path.unlink()
            if len(results["scaling"]) >= 2:
                lo, hi = results["scaling"][0], results["scaling"][-1]
                results["scaling_summary"] = {
                    "peak_rss_growth": round(hi["peak_rss_mib"] / lo["peak_rss_mib"] - 1, 3),
                    "time_per_sample_ratio": round((hi["seconds"] / hi["samples"]) / (lo["seconds"] / lo["samples"]), 3),
                }

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {a.out}", file=sys.stderr)
    return 0


def table(results: dict) -> str:
    """The README's Markdown table."""
    rows = ["| job | unit | reference_scan.py | persona-audit | ratio | peak RSS (ref / ours) |", "|---|---|---:|---:|---:|---:|"]
    for name, j in results["jobs"].items():
        u = j["unit"]
        rows.append(
            f"| {name.replace('_', ' ')} | {u.replace('_per_s', '/s')} | {j['baseline'][u]:,} | {j['persona_audit'][u]:,} | **{j['ratio']:.1f}x** | "
            f"{j['baseline']['peak_rss_mib']:,} / {j['persona_audit']['peak_rss_mib']:,} MiB |"
        )
    for s in results.get("scaling", []):
        rows.append(f"| scaling: {s['samples']:,} chats, `--baseline none` | s per 1k chats | | {s['seconds_per_1k']:,} | | {s['peak_rss_mib']:,} MiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())

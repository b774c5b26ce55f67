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

Re-scan (issue 16): a ``--rescan-samples`` dataset (default 2,000 chats with one-paragraph
answers, ``--rescan-long`` for answers of several hundred tokens: short answers make the
per-sample compute small against the fixed costs, so the ratio is the least favourable) is
scanned into a database, ``--rescan-changed`` records (default
20, spread evenly) are edited, and the changed file is scanned again into the same
database, which reuses the stored scores of every unchanged sample. Reported: both scans'
seconds (model loading excluded, as above) and wall time, how many samples the re-scan
computed and reused, and the ratio re-scan / full scan. ``--rescan-baseline`` (default
``none``: the cheapest full scan, so the least favourable ratio; ``generate`` costs about an
hour for the full scan on 2 cores).

Machine: CPU model and flags, cores, memory, torch threads and the load average before each
job (the machine may be shared: compare the ratios, which come from one run).

Agreement: the baseline prints its first five scores; the scanner's scores of the same
samples are compared with them (both bf16; greedy generations in bf16 may take another
token somewhere, so the generate job's agreement is reported, not asserted: the test suite
checks every fast path against the plain computation).

Data: ``bench/data.py`` (synthetic chats with answers of several hundred tokens).

    python bench/speed.py [--proj-samples 320] [--gen-samples 48] [--scaling 1000,10000]
                          [--rescan-samples 2000] [--rescan-changed 20] [--jobs all] [--out bench/results/speed.json]
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
JOBS = ("projection", "prompt_last", "projection_difference", "projection_difference_bf16_decoding", "scaling", "rescan")
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
    if not REFERENCE.exists():
        raise SystemExit(f"{REFERENCE} is missing: the reference implementation of the published method; run only the scanner jobs with --jobs scaling,rescan")
    cmd = [sys.executable, str(REFERENCE), str(data), str(vector_pt), str(layer), "--max-new-tokens", str(max_new_tokens)]
    if not base:
        cmd.append("--no-base")
    out, wall, rss = run_measured(cmd, work / f"{name}.log")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_rss_mib=rss, wall_seconds=round(wall, 2))
    return result


def scanner(data: Path, baseline: str, max_new_tokens: int, work: Path, name: str, extra: list[str] | None = None, db: Path | None = None) -> dict:
    """One ``audit scan`` process; its run is the newest in ``db`` (default: a database of its own)."""
    import duckdb

    db, out_dir = db or work / f"{name}.duckdb", work / name
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
    run_id, timings, n_scored, dtype = con.execute("SELECT run_id, timings, n_scored, dtype FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    reused = _reused(con, run_id)
    tokens = con.execute("SELECT sum(tokens) FROM run_chunks WHERE run_id = ?", [run_id]).fetchone()[0]
    col = "delta" if baseline != "none" else "proj_response"
    first = [
        v
        for (v,) in con.execute(
            f"SELECT {col} FROM scores WHERE run_id = ? "
            "ORDER BY (SELECT line FROM samples s WHERE s.sample_id = scores.sample_id AND s.run_id = scores.run_id) LIMIT 5",
            [run_id],
        ).fetchall()
    ]
    con.close()
    timings = json.loads(timings)
    seconds = timings["total"] - timings.get("load_model", 0.0)
    return {
        "samples": int(n_scored),
        "reused": reused,
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


def _reused(con, run_id: str) -> int | None:
    """Samples the run took from an earlier run (None for a database without the column)."""
    try:
        (n,) = con.execute("SELECT n_reused FROM runs WHERE run_id = ?", [run_id]).fetchone()
    except Exception:
        return None
    return None if n is None else int(n)


def change_records(path: Path, n: int) -> list[int]:
    """Edit ``n`` records spread evenly over the file (their last answer gains a sentence); returns their 0-based indices."""
    lines = path.read_text(encoding="utf-8").splitlines()
    step = max(len(lines) // max(n, 1), 1)
    changed = list(range(step // 2, len(lines), step))[:n]
    for i in changed:
        record = json.loads(lines[i])
        record["messages"][-1]["content"] += " (Edited for the re-scan benchmark: one more sentence at the end.)"
        lines[i] = json.dumps(record, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


def rescan(work: Path, samples: int, changed: int, baseline: str, max_new_tokens: int, long: bool = False) -> dict:
    """Full scan, edit ``changed`` records, scan again into the same database (it reuses the rest)."""
    import data as bench_data

    path = Path(bench_data.write(str(work / "rescan.jsonl"), samples, seed=3, short=not long))
    db = work / "rescan.duckdb"
    load = os.getloadavg()[0]
    print(f"[rescan] audit scan --baseline {baseline} on {samples:,} chats ...", file=sys.stderr, flush=True)
    full = scanner(path, baseline, max_new_tokens, work, "rescan-full", db=db)
    edited = change_records(path, changed)
    print(f"[rescan] {len(edited)} records changed; audit scan again into the same database ...", file=sys.stderr, flush=True)
    again = scanner(path, baseline, max_new_tokens, work, "rescan-again", db=db)
    out = {
        "samples": samples,
        "changed": len(edited),
        "answers": "several hundred tokens" if long else "one paragraph",
        "baseline": baseline,
        "load_average_before": round(load, 2),
        "full": full,
        "rescan": again,
        "computed": again["samples"] - (again["reused"] or 0),
        "reused": again["reused"],
        "ratio": round(again["seconds"] / full["seconds"], 4),
        "wall_ratio": round(again["wall_seconds"] / full["wall_seconds"], 4),
    }
    print(
        f"[rescan] full {full['seconds']:.1f} s, re-scan {again['seconds']:.1f} s ({again['reused']} reused, {out['computed']} computed): "
        f"{100 * out['ratio']:.1f}% of the full scan ({100 * out['wall_ratio']:.1f}% wall, model loading included)",
        file=sys.stderr,
        flush=True,
    )
    return out


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
    import torch

    memory = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "torch_threads": torch.get_num_threads(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proj-samples", type=int, default=320, help="Chats for the projection-only and prompt-last jobs.")
    ap.add_argument("--gen-samples", type=int, default=48, help="Chats for the full projection difference (the baseline takes ~6 s each).")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="Base response cap, the same for both sides.")
    ap.add_argument("--scaling", default="1000,10000", help="Sample counts for the memory/linearity check ('' to skip).")
    ap.add_argument("--rescan-samples", type=int, default=2000, help="Chats in the incremental re-scan job.")
    ap.add_argument("--rescan-changed", type=int, default=20, help="Records edited before the re-scan.")
    ap.add_argument("--rescan-long", action="store_true", help="Re-scan job: answers of several hundred tokens instead of one paragraph.")
    ap.add_argument("--rescan-baseline", default="none", choices=["none", "prompt-last", "generate"], help="--baseline of both re-scan job scans.")
    ap.add_argument("--jobs", default="all", help=f"Comma-separated subset of {', '.join(JOBS)} (default: all).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed.json"))
    a = ap.parse_args(argv)
    selected = set(JOBS) if a.jobs == "all" else {j.strip() for j in a.jobs.split(",") if j.strip()}
    if selected - set(JOBS):
        raise SystemExit(f"unknown --jobs {', '.join(sorted(selected - set(JOBS)))}; use {', '.join(JOBS)}")

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
        "selected_jobs": sorted(selected, key=JOBS.index),
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
            if name not in selected:
                continue
            key = f"{path.name}:{with_base}"
            if key not in ref_cache:
                print(f"[{name}] baseline: reference_scan.py on {path.name} ...", file=sys.stderr, flush=True)
                ref_cache[key] = reference(path, vector_pt, pv.layer, a.max_new_tokens, with_base, work, f"ref-{name}")
            ref = ref_cache[key]
            print(f"[{name}] persona-audit: audit scan --baseline {baseline} {' '.join(extra)}...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            ours = scanner(path, baseline, a.max_new_tokens, work, f"scan-{name}", extra)
            ratio = ours[unit] / ref[unit]
            agree = max(abs(x - y) for x, y in zip(ours["first_scores"], ref["first_scores"])) if baseline != "prompt-last" else None
            results["jobs"][name] = {
                "unit": unit,
                "baseline": ref,
                "persona_audit": ours,
                "ratio": round(ratio, 2),
                "load_average_before": round(load, 2),
                "max_abs_diff_first_scores": None if agree is None else round(agree, 4),
            }
            print(
                f"[{name}] {unit}: reference {ref[unit]:,} vs persona-audit {ours[unit]:,} -> {ratio:.1f}x; "
                f"peak RSS {ref['peak_rss_mib']} vs {ours['peak_rss_mib']} MiB",
                file=sys.stderr,
                flush=True,
            )

        counts = [int(x) for x in a.scaling.split(",") if x.strip()] if "scaling" in selected else []
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

        if "rescan" in selected:
            results["rescan"] = rescan(work, a.rescan_samples, a.rescan_changed, a.rescan_baseline, a.max_new_tokens, a.rescan_long)

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
    r = results.get("rescan")
    if r:
        rows.append(
            f"| re-scan: {r['samples']:,} chats, {r['changed']} changed, `--baseline {r['baseline']}` | s (full / re-scan) | | "
            f"{r['full']['seconds']:,} / {r['rescan']['seconds']:,} | **{100 * r['ratio']:.1f}%** | {r['full']['peak_rss_mib']:,} / {r['rescan']['peak_rss_mib']:,} MiB |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())

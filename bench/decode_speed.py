#!/usr/bin/env python3
"""Greedy decoders compared in one run (issue 16, item 3): the current KV-cache decoder that
drops finished rows (``dynamic``) against the static KV cache, eager and with the compiled
decode step (``static``), on bench/data.py chats, at the automatic generation batch size,
in float32 (the CPU default for base responses).

Each timed run decodes the same prompts; the runs alternate (dynamic, static-compiled,
static-eager, and again) so that load from other jobs hits them alike. The first compiled
run includes the ``torch.compile`` warm-up and is reported apart. Tokens must be identical
across all runs (checked). The dynamic run also records the time at every step, which gives
the decoding time per sample at each cap ``--caps`` (greedy decoding with cap k runs exactly
the first k forwards of a longer run).

usage: python bench/decode_speed.py [--prompts 32] [--max-new-tokens 64] [--repeats 2] [--threads 2] [--out bench/results/decode_speed.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def step_times(model, run):
    """Runs ``run()`` while recording the end time of every model forward -> (result, [seconds since start]);
    the last entry is the end of the run."""
    stamps: list[float] = []
    handle = model.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
    t0 = time.perf_counter()
    try:
        result = run()
    finally:
        handle.remove()
    end = time.perf_counter()
    return result, [s - t0 for s in stamps] + [end - t0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--caps", default="32,64,128,256")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-compiled", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode_speed.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from data import chats

    from auditor.generation import _eos_ids, _left_padded, default_generation_batch_size, greedy_decode, greedy_decode_static, prompt_ids
    from auditor.model import load_model

    lm = load_model(None, dtype="float32", device="cpu")
    batch = default_generation_batch_size(lm, args.max_new_tokens, 512)
    tok = lm.tokenizer
    prompts = [
        prompt_ids(lm, tok.apply_chat_template(c["messages"][:-1], tokenize=False, add_generation_prompt=True), 512) for c in chats(args.prompts, args.seed)
    ]
    prompts.sort(key=len)
    eos = _eos_ids(lm)
    batches = [_left_padded(prompts[i : i + batch], tok.pad_token_id) for i in range(0, len(prompts), batch)]

    stamps: list[list[float]] = []  # per batch of the last dynamic run: seconds at the end of each forward

    def run(decode, **kw):
        out, total = [], 0.0
        if decode is greedy_decode:
            stamps.clear()
        for ids, mask in batches:
            new, steps = step_times(lm.model, lambda ids=ids, mask=mask: decode(lm.model, ids, mask, args.max_new_tokens, eos, **kw))
            out += new
            total += steps[-1] if steps else 0.0
            if decode is greedy_decode:
                stamps.append(steps)
        return out, total

    kinds = {"dynamic": (greedy_decode, {}), "static_eager": (greedy_decode_static, {"compile": False})}
    if not args.skip_compiled:
        kinds["static_compiled"] = (greedy_decode_static, {"compile": True})
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    tokens: dict[str, list] = {}
    warmup = None
    if not args.skip_compiled:
        tokens["static_compiled"], warmup = run(greedy_decode_static, compile=True)
        print(f"static_compiled first run (with compile warm-up): {warmup:.1f} s", file=sys.stderr)
    for rep in range(args.repeats):
        for kind, (decode, kw) in kinds.items():
            tokens[kind], s = run(decode, **kw)
            seconds[kind].append(round(s, 2))
            print(f"repeat {rep}: {kind} {s:.1f} s", file=sys.stderr)
    same = {k: tokens[k] == tokens["dynamic"] for k in tokens}
    generated = sum(len(t) for t in tokens["dynamic"])
    # Per-cap decoding time per sample: greedy decoding with cap k runs the first k forwards of a longer run.
    per_cap = {}
    for cap in (int(c) for c in args.caps.split(",")):
        if cap <= args.max_new_tokens:
            secs = sum(st[min(cap, len(st)) - 1] for st in stamps)
            per_cap[str(cap)] = {
                "seconds_per_sample": round(secs / len(prompts), 3),
                "tokens_per_sample": round(sum(min(len(t), cap) for t in tokens["dynamic"]) / len(prompts), 1),
            }
    best = {k: min(v) for k, v in seconds.items()}
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
        "cpu": cpu_model(),
        "threads": args.threads,
        "torch": torch.__version__,
        "prompts": len(prompts),
        "batch_size": batch,
        "max_new_tokens": args.max_new_tokens,
        "dtype": "float32",
        "generated_tokens": generated,
        "seconds": seconds,
        "compiled_first_run_seconds": warmup,
        "speedup_vs_dynamic": {k: round(best["dynamic"] / v, 3) for k, v in best.items()},
        "tokens_identical_to_dynamic": same,
        "dynamic_time_per_cap": per_cap,
        "note": "runs alternate within one process; the machine may be shared with other jobs (see bench/NOTES-decode.md)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

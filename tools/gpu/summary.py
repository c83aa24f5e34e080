#!/usr/bin/env python3
"""Summary tables of a tools/gpu/check.sh run, from the files it left in OUTDIR.

    python3 tools/gpu/summary.py OUTDIR

Parity per dtype (parity-<dtype>.json from `rewarddance parity --json`), model throughput
(bench-model.md: the Markdown rows `rewarddance bench-model` prints, one `### bench-model --preset
P` heading per preset) next to transformers on the same card (baseline.json, when it ran) and the
H200 transformers numbers measured by the founders (NOTES_H200 below), and the server benchmark (the JSON line
`rewarddance bench` prints last). Standard library only.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Transformers 5.17 on one H200, bf16, items/s: the founders' baseline measurement (the numbers to beat).
NOTES_H200 = {
    ("1b", "pointwise", 1): 41.7, ("1b", "pointwise", 16): 351.8, ("1b", "pointwise", 64): 378.1,
    ("1b", "pairwise", 64): 196.1,
    ("2b", "pointwise", 1): 16.0, ("2b", "pointwise", 16): 223.5, ("2b", "pointwise", 64): 247.6,
    ("2b", "pairwise", 64): 132.8,
    ("8b", "pointwise", 1): 15.4, ("8b", "pointwise", 16): 95.2, ("8b", "pointwise", 64): 96.5,
    ("8b", "pairwise", 64): 53.6,
}


def parity(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.glob("parity-*.json")):
        report = json.loads(path.read_text())
        if not lines:
            lines += ["| parity | fixture | items | max abs dlogit | logit tol | max abs dp_yes | p tol "
                      "| dlogit vs cpu f32 | result |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for f in report["fixtures"]:
            vs_cpu = f.get("max_abs_dlogit_vs_cpu")
            lines.append(
                f"| {report['dtype']} | {f['fixture']} | {f['items']} | {f['max_abs_dlogit']:.2e} "
                f"| {f['logit_tolerance']:.2e} | {f['max_abs_dp_yes']:.2e} | {report['p_tolerance']:g} "
                f"| {'-' if vs_cpu is None else f'{vs_cpu:.2e}'} | {'PASS' if f['pass'] else 'FAIL'} |")
    return lines or ["parity: no results"]


def bench_model(out: Path) -> list[str]:
    path = out / "bench-model.md"
    if not path.exists():
        return ["bench-model: no results"]
    baseline = {}
    if (out / "baseline.json").exists():
        for row in json.loads((out / "baseline.json").read_text() or "[]"):
            baseline[(row["preset"], row["mode"], row["batch"])] = row["items_per_s"]
    lines = ["| preset | mode | batch | tokens/item | ms/batch | items/s | MFU | transformers, this card | "
             "vs transformers | transformers H200 (NOTES) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    preset = "?"
    for line in path.read_text().splitlines():
        m = re.match(r"### bench-model --preset (\S+)", line)
        if m:
            preset = m.group(1)
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] not in ("pointwise", "pairwise"):
            continue
        mode, batch, tokens, _tflop, ms, rate, mfu = cells
        key = (preset, mode, int(batch))
        hf = baseline.get(key)
        ratio = f"{float(rate) / hf:.2f}x" if hf else "-"
        notes = NOTES_H200.get(key)
        lines.append(f"| {preset} | {mode} | {batch} | {tokens} | {ms} | {rate} | {mfu} | "
                     f"{f'{hf:.1f}' if hf else '-'} | {ratio} | {notes if notes else '-'} |")
    return lines


def server(out: Path) -> list[str]:
    path = out / "server-bench.txt"
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.startswith("{")] if path.exists() else []
    if not rows:
        return ["server bench: no results"]
    r = rows[-1]
    lines = ["| server bench | items | concurrency | items/s | p50 ms | p99 ms | failed | in-process items/s | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {r['model']} | {r['items']} | {r['concurrency']} | {r['server_items_per_s']:.1f} | "
             f"{r['server_p50_ms']:.1f} | {r['server_p99_ms']:.1f} | {r['server_failed']} | "
             f"{r.get('in_process_items_per_s', float('nan')):.1f} | {r.get('ratio', float('nan')):.3f} |"]
    return lines


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/gpu-check")
    for section in (parity, bench_model, server):
        try:
            print("\n".join(section(out)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"{section.__name__}: unreadable results ({e})")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

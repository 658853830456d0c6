"""A/B of the decode kernels between two source trees, in one run on one GPU: bench_decode.py of each tree,
alternated round by round in ABBA order (base, new, new, base, ...), on the same random data (same seeds), and
a table of each case's median time per tree and the ratio.

    python benchmarks/ab_decode.py --base /path/to/old/checkout --rounds 3 [--out ab.json] [bench_decode args]

Each tree runs its own benchmarks/bench_decode.py with --json (its API may differ from this tree's) and with
PYTHONPATH pointing at that tree only."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run_tree(tree: Path, bench_args: list, json_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                        if p and Path(p).resolve() != HERE])
    env["GLACOMPILER_CACHE_DIR"] = str(json_path.parent / f"cache-{tree.name}")
    command = [sys.executable, str(tree / "benchmarks" / "bench_decode.py"), "--skip-baselines", "--json",
               str(json_path), *bench_args]
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{tree}: bench_decode failed\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(json_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the source tree to compare against (a checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write every round's results here (JSON)")
    args, bench_args = parser.parse_known_args()
    trees = {"base": Path(args.base).resolve(), "new": HERE}
    times: dict = {}  # (case, Lq) -> {tree: [ms per round]}
    kernels: dict = {}
    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = list(trees.items()) if round_index % 2 == 0 else list(trees.items())[::-1]  # ABBA: no tree
            for name, tree in order:  # always runs first on a cooler card
                data = run_tree(tree, bench_args, Path(scratch) / f"{name}-{round_index}.json")
                rounds.append({"tree": name, "round": round_index, **data})
                for row in data["results"]:
                    times.setdefault((row["case"], row["q_len"]), {}).setdefault(name, []).append(row["ms"])
                    kernels[(row["case"], row["q_len"], name)] = row["kernel"]
                print(f"round {round_index + 1}/{args.rounds}: {name} done", flush=True)
    gpu = rounds[0]["gpu"]
    print(f"\n# {gpu}; copy {rounds[0]['bandwidth'] / 1e9:.0f} GB/s, bf16 matmul {rounds[0]['flop_rate'] / 1e12:.0f} "
          f"TFLOP/s; {args.rounds} rounds, base {trees['base']}, bench_decode args {' '.join(bench_args) or '(defaults)'}")
    print("| case | Lq | kernel (base / new) | base us (median; all) | new us (median; all) | new / base |")
    print("|---|---|---|---|---|---|")
    for (case, query_len), by_tree in times.items():
        base, new = statistics.median(by_tree["base"]), statistics.median(by_tree["new"])
        print(f"| {case} | {query_len} | {kernels[(case, query_len, 'base')]} / {kernels[(case, query_len, 'new')]} | "
              f"{base * 1e3:.1f} ({', '.join(f'{t * 1e3:.1f}' for t in by_tree['base'])}) | "
              f"{new * 1e3:.1f} ({', '.join(f'{t * 1e3:.1f}' for t in by_tree['new'])}) | {new / base:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()

"""A/B of the op between two source trees, in one run on one GPU: kernel time by CUDA-graph replay and host time
per call, through the public attention_with_kvcache only (the same in both trees), on identical data.

    python benchmarks/ab_decode.py --base /path/to/old/checkout [--rounds 3] [--batch 128 --seqlen 8192]
    python benchmarks/ab_decode.py --base old/site --new new/site --rows mla:8:32768:1,mla:32:4096:1 --combine 1024:8:512

--base and --new take any folder that holds a `glacompiler` package: a checkout, or a folder a wheel was installed
into with `pip install --no-deps --target` (with its dependencies it would shadow the machine's torch and triton).
A worker refuses a tree whose code or templates it did not load from that tree (an editable install elsewhere maps
the templates to its own checkout). --rows replaces the cases x query lengths at one batch and cache by a list of
case:batch:cache:query_len rows; --combine adds the split combine alone on rows:splits:Dv partial outputs.

Each tree is timed by a worker process of this script with PYTHONPATH pointing at that tree, round by round in
ABBA order (base, new, new, base, ...), so that neither tree always runs first on a cooler card. The table gives
each case's median over the rounds, and the ratio new / base. The op picks its own kernel family and config: the
family's heuristic (GLACOMPILER_TUNED_CONFIGS=0), or with --tuned-configs what each tree's tables give."""
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
# name: (query heads, KV or latent heads, K/latent width, V width (0: tied), rope width, GTA tied-state split)
CASES = {
    "mla": (128, 1, 512, 0, 64),
    "gla2": (128, 2, 256, 0, 64),
    "gla8": (128, 8, 256, 0, 64),
    "gta": (16, 4, 128, 0, 64),
    "gqa": (32, 8, 128, 128, 0),
}


def make_inputs(name: str, batch: int, seqlen: int, query_len: int, page_size: int, seed: int = 0,
                device: str = "cuda", dtype=None) -> dict:
    """The op's keyword arguments for a case of CASES (see paged_decode_inputs)."""
    heads, kv_heads, width, v_width, rope = CASES[name]
    return paged_decode_inputs(heads, kv_heads, width, v_width, rope, batch, seqlen, query_len, page_size, seed,
                               query_width=width - rope if name == "gta" else width, device=device, dtype=dtype)


def paged_decode_inputs(heads: int, kv_heads: int, width: int, v_width: int, rope: int, batch: int, seqlen: int,
                        query_len: int, page_size: int, seed: int = 0, query_width: int = 0, device: str = "cuda",
                        dtype=None) -> dict:
    """The op's keyword arguments, bf16 unless dtype says, built on the GPU from a seed (a long cache is too big to
    draw on the host): full lengths, a permuted page table (page_size 0: contiguous caches [B, S, ...], no page
    table); v_width 0: tied (no v_cache); rope 0: no rope key; query_width 0: width. (device="cpu" for the tests'
    small cases.)"""
    import torch

    device, dtype = torch.device(device), dtype or torch.bfloat16
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    # A paged cache is [pages, page_size, ...]; a contiguous one [batch, seqlen, ...].
    lead = (batch * (seqlen // page_size), page_size) if page_size else (batch, seqlen)
    kwargs = dict(
        q=randn(batch, query_len, heads, query_width or width),
        k_cache=randn(*lead, kv_heads, width),
        v_cache=randn(*lead, kv_heads, v_width) if v_width else None,
        cache_seqlens=torch.full((batch,), seqlen, device=device, dtype=torch.int32),
        page_table=(torch.randperm(lead[0], device=device, generator=generator).to(torch.int32).view(batch, -1)
                    if page_size else None),
    )
    if rope:
        kwargs.update(q_rope=randn(batch, query_len, heads, rope), k_rope_cache=randn(*lead, rope))
    return kwargs


def worker(args) -> None:
    """Time every case with the glacompiler on PYTHONPATH; print one JSON line."""
    import time

    import torch
    import triton.testing

    import glacompiler
    from glacompiler.package_data import shipped_folder

    results = []
    for name, batch, seqlen, query_len in worker_rows(args):
        kwargs = make_inputs(name, batch, seqlen, query_len, args.page_size)

        def call(kwargs=kwargs):
            return glacompiler.attention_with_kvcache(**kwargs)

        out = call()
        torch.cuda.synchronize()
        kernel_ms = triton.testing.do_bench_cudagraph(call, rep=100, return_mode="median")
        for _ in range(20):  # host time: back-to-back calls, far fewer than the launch queue holds
            call()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(100):
            call()
        host_us = (time.perf_counter() - start) / 100 * 1e6
        torch.cuda.synchronize()
        results.append(dict(case=f"{name} B{batch} S{seqlen}", q_len=query_len, kernel_us=kernel_ms * 1e3,
                            host_us=host_us, checksum=float(out.float().abs().sum())))
        kwargs = out = call = None  # free this case's caches before the next one's
        torch.cuda.empty_cache()
    for rows, splits, head_dim_v in combine_shapes(args):
        results.append(time_combine(rows, splits, head_dim_v))
    print(json.dumps(dict(gpu=torch.cuda.get_device_name(), glacompiler=glacompiler.__file__,
                          templates=str(shipped_folder("templates")), results=results)))


def worker_rows(args) -> list[tuple[str, int, int, int]]:
    """(case, batch, cache, query_len) of each row to time: --rows, else the cases x query lengths."""
    if args.rows:
        return [(case, int(batch), int(seqlen), int(query_len))
                for case, batch, seqlen, query_len in (row.split(":") for row in args.rows.split(","))]
    return [(name, args.batch, args.seqlen, int(query_len))
            for name in args.cases.split(",") for query_len in args.q_lens.split(",")]


def time_combine(rows: int, splits: int, head_dim_v: int) -> dict:
    """The split combine alone on random fp32 partials (a third of the splits empty), bf16 outputs: one result row."""
    import torch
    import triton.testing

    from glacompiler.kernels.common.combine import combine_splits

    generator = torch.Generator(device="cuda").manual_seed(rows + splits)
    split_out = torch.randn(rows, splits, head_dim_v, device="cuda", generator=generator)
    split_lse = torch.randn(rows, splits, device="cuda", generator=generator)
    split_lse[:, ::3] = float("-inf")
    out = torch.empty(rows, head_dim_v, device="cuda", dtype=torch.bfloat16)
    lse = torch.empty(rows, device="cuda")

    def call():
        combine_splits(split_out, split_lse, out, lse)

    call()
    torch.cuda.synchronize()
    kernel_ms = triton.testing.do_bench_cudagraph(call, rep=100, return_mode="median")
    return dict(case=f"combine {rows}x{splits}x{head_dim_v}", q_len=0, kernel_us=kernel_ms * 1e3, host_us=0.0,
                checksum=float(out.float().abs().sum()))


def combine_shapes(args) -> list[tuple[int, int, int]]:
    """(rows, splits, Dv) of each --combine shape."""
    return [tuple(int(x) for x in shape.split(":")) for shape in args.combine.split(",") if shape]


def check_row_arguments(parser, args) -> None:
    """Malformed --rows or --combine, or a cache that is not whole pages, fail here rather than in a worker."""
    try:
        rows, shapes = worker_rows(args), combine_shapes(args)
    except ValueError as error:
        parser.error(f"--rows takes case:batch:cache:query_len and --combine rows:splits:Dv ({error})")
    for case, batch, seqlen, query_len in rows:
        if case not in CASES:
            parser.error(f"--rows: unknown case {case!r} (one of {', '.join(CASES)})")
        if args.page_size and seqlen % args.page_size:
            parser.error(f"--rows: cache {seqlen} of {case} is not a multiple of --page-size {args.page_size}")
    if any(len(shape) != 3 for shape in shapes):
        parser.error("--combine takes rows:splits:Dv")


def loaded_from(tree: Path, data: dict) -> bool:
    """Whether the worker's glacompiler code and templates both came from the tree."""
    return all(Path(data[key]).resolve().is_relative_to(tree) for key in ("glacompiler", "templates"))


def run_tree(name: str, tree: Path, args, scratch: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                        if p and Path(p).resolve() != HERE])
    env["GLACOMPILER_CACHE_DIR"] = str(scratch / f"cache-{name}")
    if not args.tuned_configs:  # (trees from before GLACOMPILER_TUNED_CONFIGS ship no table for this GPU's kind)
        env["GLACOMPILER_TUNED_CONFIGS"] = "0"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--cases", args.cases, "--q-lens",
               args.q_lens, "--batch", str(args.batch), "--seqlen", str(args.seqlen), "--page-size",
               str(args.page_size), "--rows", args.rows, "--combine", args.combine]
    result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{tree}: worker failed\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    if not loaded_from(tree, data):
        raise RuntimeError(f"{tree}: the worker loaded glacompiler from {data['glacompiler']} and its templates from "
                           f"{data['templates']}, not from this tree: install its wheel with pip install --no-deps "
                           "--target and pass that folder")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base",
                        help="the tree to compare against (a checkout, or a folder a wheel was installed into)")
    parser.add_argument("--new", default=str(HERE), help="the tree to time against it (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="mla,gla2,gla8,gta,gqa")
    parser.add_argument("--q-lens", default="1,2")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--page-size", type=int, default=64)
    parser.add_argument("--rows", default="", help="case:batch:cache:query_len rows, comma-separated (replaces "
                        "--cases, --q-lens, --batch and --seqlen)")
    parser.add_argument("--combine", default="",
                        help="rows:splits:Dv shapes of the split combine alone, comma-separated")
    parser.add_argument("--out", help="write every round's results here (JSON)")
    parser.add_argument("--tuned-configs", action="store_true",
                        help="let each tree use its tuned tables (default: both on their heuristics)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not args.base:
        parser.error("--base is required")
    check_row_arguments(parser, args)
    trees = {"base": Path(args.base).resolve(), "new": Path(args.new).resolve()}
    rounds, table = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = list(trees.items()) if round_index % 2 == 0 else list(trees.items())[::-1]
            for name, tree in order:
                data = run_tree(name, tree, args, Path(scratch))
                rounds.append({"tree": name, "round": round_index, **data})
                for row in data["results"]:
                    table.setdefault((row["case"], row["q_len"]), {}).setdefault(name, []).append(row)
                print(f"round {round_index + 1}/{args.rounds}: {name} done ({data['glacompiler']})", flush=True)
    shapes = "rows as named" if args.rows else f"batch {args.batch}, cache {args.seqlen}"
    print(f"\n# {rounds[0]['gpu']}; {shapes}, page {args.page_size}; {args.rounds} rounds "
          "(ABBA); kernel us by CUDA-graph replay (median of do_bench_cudagraph), host us per back-to-back call")
    print("| case | Lq | base kernel us | new kernel us | new / base | base host us | new host us | same output |")
    print("|---|---|---|---|---|---|---|---|")
    for (case, query_len), by_tree in table.items():
        kernel = {t: statistics.median(r["kernel_us"] for r in rows) for t, rows in by_tree.items()}
        host = {t: statistics.median(r["host_us"] for r in rows) for t, rows in by_tree.items()}
        sums = {r["checksum"] for rows in by_tree.values() for r in rows}
        same = max(sums) - min(sums) <= 1e-6 * max(abs(s) for s in sums)
        print(f"| {case} | {query_len} | {kernel['base']:.1f} | {kernel['new']:.1f} | {kernel['new'] / kernel['base']:.3f} | "
              f"{host['base']:.0f} | {host['new']:.0f} | {'yes' if same else 'NO'} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()

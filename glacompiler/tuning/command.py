"""`glacompiler autotune` and `glacompiler configs show`: subcommands that glacompiler.cli registers (run them as
`glacompiler ...` or `python -m glacompiler ...`)."""
from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path
from typing import Optional

from ..op.validation import MAX_QUERY_LEN
from ..presets import PAPER_SPECS
from ..spec import KINDS, AttentionSpec, dtype_from_name
from ..usage import EXIT_USAGE, UsageError

TUNABLE_KINDS = KINDS

DEFAULT_BATCHES = (1, 8, 32, 128)
DEFAULT_SEQLENS = (1024, 8192, 32768)
DEFAULT_QUERY_LENS = (1, 2, 4)
DEFAULT_TRIALS = 24


def register(subparsers) -> None:
    autotune = subparsers.add_parser(
        "autotune",
        help="tune kernel configs on this GPU and store them in a table",
        description="Tune decode-attention kernel configs with Optuna for one or more specs over a grid of shape "
                    "buckets (batch x cache length x query length) and write them to a table (default: the "
                    "user cache for this GPU, where the op finds them). Each bucket is tuned for the kernel family "
                    "the op runs it on; MLA/GLA buckets that a compiled graph launches on the portable kernels "
                    "(few query rows a latent head, a bounded cache) for those too.",
    )
    what = autotune.add_argument_group("what to tune: --preset, or --kind with dims")
    what.add_argument("--preset", nargs="+", choices=sorted(PAPER_SPECS), metavar="NAME",
                      help=f"one or more of the paper's configs: {', '.join(sorted(PAPER_SPECS))}")
    what.add_argument("--kind", choices=TUNABLE_KINDS)
    what.add_argument("--heads", type=int, help="query heads")
    what.add_argument("--kv-heads", "--latent-heads", dest="kv_heads", type=int,
                      help="KV heads (MLA/GLA: latent heads); default: heads for mha, 1 for mqa and mla")
    what.add_argument("--head-dim", "--latent-dim", dest="head_dim", type=int,
                      help="head dim (GTA: the tied state d_h; MLA/GLA: the latent width)")
    what.add_argument("--rope-dim", type=int, help="shared rope key width; default 64 for gta/mla/gla, else 0")
    autotune.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    autotune.add_argument("--page-size", type=int, default=64, help="page size of the paged cache; 0 = contiguous")
    grid = autotune.add_argument_group("buckets")
    grid.add_argument("--batch", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    grid.add_argument("--seqlen", type=int, nargs="+", default=list(DEFAULT_SEQLENS), help="cache lengths")
    grid.add_argument("--q-len", type=int, nargs="+", default=list(DEFAULT_QUERY_LENS), help="query tokens per step")
    budget = autotune.add_argument_group("budget")
    budget.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="configs timed per bucket")
    budget.add_argument("--time-budget", type=float, help="seconds for the whole run; buckets share what is left")
    budget.add_argument("--bucket-time", type=float, help="seconds per bucket at most")
    output = autotune.add_argument_group("output")
    output.add_argument("--out", help="table file, or a directory (gets <GPU>.json); default: the user cache")
    output.add_argument("--storage", help="Optuna journal file, to resume an interrupted run; default: <out>.journal")
    output.add_argument("--retune", action="store_true", help="tune buckets that the table already has")
    autotune.set_defaults(handler=functools.partial(run_autotune, parser=autotune))

    configs = subparsers.add_parser("configs", help="inspect tuned-config tables")
    configs_sub = configs.add_subparsers(dest="configs_command", required=True)
    show = configs_sub.add_parser("show", help="print a table file readably")
    show.add_argument("target", nargs="?",
                      help="a table file, a GPU name ('NVIDIA H200') or part of one ('h100'); default: this GPU, else "
                           "every table found")
    show.set_defaults(handler=run_configs_show)


def spec_from_flags(kind: str, heads: int, kv_heads: int, head_dim: int, rope_dim: int, dtype: str = "bfloat16",
                    page_size: int = 64) -> AttentionSpec:
    """The AttentionSpec of dims as a user states them (GTA: head_dim is the tied state d_h, of which rope_dim is
    the shared rope key's share of K; MLA/GLA: kv_heads are latent heads, head_dim the latent width), checked by
    the op's own validation on meta tensors. ValueError with a readable message for impossible dims."""
    if kind not in TUNABLE_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(TUNABLE_KINDS)}")
    for name, value in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if rope_dim < 0:
        raise ValueError(f"rope dim must be >= 0, got {rope_dim}")
    if page_size < 0:
        raise ValueError(f"page size must be >= 0 (0 = contiguous cache), got {page_size}")
    try:
        torch_dtype = dtype_from_name(dtype)
    except ValueError:
        raise ValueError(f"unknown dtype {dtype!r}; expected bfloat16, float16 or float32") from None
    if kind == "gta" and not 0 < rope_dim < head_dim:
        raise ValueError(f"gta needs 0 < rope dim < head dim (d_R < d_h), got d_h {head_dim}, d_R {rope_dim}")
    if kind == "gta":
        spec = AttentionSpec.grouped_tied(heads, kv_heads, head_dim, rope_dim)
    elif kind in ("mla", "gla"):
        spec = AttentionSpec.latent(heads, kv_heads, head_dim, rope_dim)
    else:
        spec = AttentionSpec.from_dims(heads, kv_heads, head_dim, head_dim, head_dim, rope_dim, False, False, dtype)
    checked = checked_spec(spec, torch_dtype, page_size)
    if checked.kind != kind:
        tied = kind in ("gta", "mla", "gla")
        raise ValueError(f"these dims describe {checked.kind}, not {kind} "
                         f"({heads} query heads over {kv_heads} {'latent' if tied else 'KV'} heads)")
    return checked


def checked_spec(spec: AttentionSpec, torch_dtype, page_size: int) -> AttentionSpec:
    """The spec the op itself derives from tensors of spec's head layout in this dtype and paging (its
    validation runs on meta tensors): ValueError for what the op would refuse."""
    import torch

    from ..op.validation import validate_inputs

    def meta(*shape, dtype=torch_dtype):
        return torch.empty(*shape, dtype=dtype, device="meta")

    lead = (1, page_size) if page_size else (1, 1)
    q = meta(1, 1, spec.num_q_heads, spec.head_dim_q)
    k_cache = meta(*lead, spec.num_kv_heads, spec.head_dim_k)
    v_cache = None if spec.tied else meta(*lead, spec.num_kv_heads, spec.head_dim_v)
    q_rope = meta(1, 1, spec.num_q_heads, spec.rope_dim) if spec.rope_dim else None
    k_rope_cache = meta(*lead, spec.rope_dim) if spec.rope_dim else None
    page_table = meta(1, 1, dtype=torch.int32) if page_size else None
    checked, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, None, page_table, None, None, None)
    return checked


def specs_from_args(args) -> list:
    """The specs an autotune command asks for; UsageError for impossible requests."""
    if args.preset and args.kind:
        raise UsageError("give either --preset or --kind with dims, not both")
    if not args.preset and not args.kind:
        raise UsageError("say what to tune: --preset NAME, or --kind with --heads, --kv-heads/--latent-heads and "
                         "--head-dim/--latent-dim")
    if args.preset:
        explicit = [flag for flag, value in (("--heads", args.heads), ("--kv-heads", args.kv_heads),
                                             ("--head-dim", args.head_dim), ("--rope-dim", args.rope_dim)) if value is not None]
        if explicit:
            raise UsageError(f"{', '.join(explicit)} cannot be combined with --preset (presets fix their dims)")
        try:
            return [checked_spec(PAPER_SPECS[name], dtype_from_name(args.dtype), args.page_size)
                    for name in dict.fromkeys(args.preset)]
        except (ValueError, TypeError) as error:
            raise UsageError(f"bad dims: {error}") from None
    else:
        kv_heads = args.kv_heads
        if kv_heads is None:
            kv_heads = {"mha": args.heads, "mqa": 1, "mla": 1}.get(args.kind)
        missing = [flag for flag, value in (("--heads", args.heads), ("--kv-heads/--latent-heads", kv_heads),
                                            ("--head-dim/--latent-dim", args.head_dim)) if value is None]
        if missing:
            raise UsageError(f"--kind {args.kind} needs {', '.join(missing)}")
        rope_dim = args.rope_dim if args.rope_dim is not None else (64 if args.kind in ("gta", "mla", "gla") else 0)
    try:
        return [spec_from_flags(args.kind, args.heads, kv_heads, args.head_dim, rope_dim, args.dtype, args.page_size)]
    except (ValueError, TypeError) as error:
        raise UsageError(f"bad dims: {error}") from None


def check_grid(args) -> None:
    for flag, values in (("--batch", args.batch), ("--seqlen", args.seqlen), ("--q-len", args.q_len)):
        bad = [v for v in values if v < 1]
        if bad:
            raise UsageError(f"{flag} values must be positive, got {bad}")
    too_long = [v for v in args.q_len if v > MAX_QUERY_LEN]
    if too_long:
        raise UsageError(f"--q-len values must be at most {MAX_QUERY_LEN}, got {too_long}")
    if args.page_size:
        ragged = [v for v in args.seqlen if v % args.page_size]
        if ragged:
            raise UsageError(f"--seqlen values must be multiples of the page size {args.page_size}, got {ragged}")
    short = [v for v in args.seqlen if v < max(args.q_len)]
    if short:
        raise UsageError(f"--seqlen values must hold the {max(args.q_len)} query tokens, got {short}")
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    for flag, value in (("--time-budget", args.time_budget), ("--bucket-time", args.bucket_time)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")


def canonical_command(args) -> str:
    """The command line that reproduces this run (recorded in the table)."""
    words = ["glacompiler", "autotune"]
    if args.preset:
        words += ["--preset", *dict.fromkeys(args.preset)]
    else:
        words += ["--kind", args.kind, "--heads", str(args.heads)]
        if args.kv_heads is not None:
            words += ["--kv-heads", str(args.kv_heads)]
        words += ["--head-dim", str(args.head_dim)]
        if args.rope_dim is not None:
            words += ["--rope-dim", str(args.rope_dim)]
    words += ["--dtype", args.dtype, "--page-size", str(args.page_size)]
    for flag, values in (("--batch", args.batch), ("--seqlen", args.seqlen), ("--q-len", args.q_len)):
        words += [flag, *map(str, values)]
    words += ["--trials", str(args.trials)]
    for flag, value in (("--time-budget", args.time_budget), ("--bucket-time", args.bucket_time)):
        if value is not None:
            words += [flag, f"{value:g}"]
    return shlex.join(words)


def _error(parser: Optional[argparse.ArgumentParser], message: str) -> int:
    prog = parser.prog if parser is not None else "glacompiler"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def resolve_out_path(out: Optional[str], gpu_name: str) -> Path:
    from ..tables.table_file import gpu_file_name, user_table_path

    if out is None:
        return user_table_path(gpu_name)
    path = Path(out)
    if path.is_dir() or out.endswith(("/", "\\")):
        return path / gpu_file_name(gpu_name)
    return path


def run_autotune(args, parser: Optional[argparse.ArgumentParser] = None) -> int:
    try:
        specs = specs_from_args(args)
        check_grid(args)
    except UsageError as error:
        return _error(parser, str(error))

    import torch

    if not torch.cuda.is_available():
        return _error(parser, "autotune times kernels on a CUDA GPU, and torch sees none here "
                              "(torch.cuda.is_available() is False). Run it on the GPU the table is for.")
    try:
        import optuna  # noqa: F401
    except ImportError:
        return _error(parser, "autotune needs optuna: pip install 'glacompiler[tune]'")

    from ..kernels.common.device_limits import DeviceLimits
    from ..tables.table_file import TableFormatError, open_for_update, read_table, speedup_summary
    from .benchmark import KernelBenchmark
    from .driver import plan_jobs, run_tuning
    from .study import TuningBudget

    device = torch.device("cuda", torch.cuda.current_device())
    limits = DeviceLimits.for_device(device)
    out_path = resolve_out_path(args.out, limits.name)
    # A table of another GPU, or one that does not parse: refused before anything is timed (run_tuning reads it again).
    try:
        open_for_update(out_path, limits.name)
    except TableFormatError as error:
        return _error(parser, f"--out: {error}")
    storage_path = Path(args.storage) if args.storage else out_path.with_suffix(".journal")
    jobs = plan_jobs(specs, args.batch, args.seqlen, args.q_len, args.page_size, device)
    print(f"# {limits.name}: {len(jobs)} buckets x up to {args.trials} trials -> {out_path} (journal {storage_path})",
          flush=True)
    summary = run_tuning(
        jobs,
        out_path=out_path,
        limits=limits,
        evaluator_factory=lambda job: KernelBenchmark(job.spec, job.shape, device, limits),
        budget=TuningBudget(trials=args.trials, time_s=args.bucket_time),
        total_time_s=args.time_budget,
        storage_path=storage_path,
        command=canonical_command(args),
        retune=args.retune,
    )
    print(f"# tuned {len(summary.tuned)}, already in the table {len(summary.already_done)}, "
          f"not started (time) {len(summary.not_started)}, failed {len(summary.failed)}")
    for job in summary.not_started:
        print(f"#   not covered: {job.label()}")
    for job, reason in summary.failed:
        print(f"#   failed: {job.label()}: {reason}")
    if out_path.exists():
        stats = speedup_summary(read_table(out_path).entries.values())
        if stats:
            print(f"# table: {stats['entries']} entries, speed-up over the heuristic: median x{stats['median']:.2f}, "
                  f"worst x{stats['worst']:.2f}, best x{stats['best']:.2f}")
    return 0 if not summary.failed else 1


def _config_label(config) -> str:
    from ..kernels.portable import PortableConfig

    if not isinstance(config, PortableConfig):
        return " ".join(f"{name}={value}" for name, value in config.to_dict().items())
    return (f"m{config.block_m} n{config.block_n} d{config.block_d} dv/{config.dv_split} s{config.num_splits} "
            f"w{config.num_warps} st{config.num_stages}{' pq' if config.preload_q else ''}"
            f"{' fc' if config.fused_combine else ''}")


def _spec_label(spec) -> str:
    rope = f"+{spec.rope_dim}" if spec.rope_dim else ""
    return (f"{spec.kind} {spec.num_q_heads}/{spec.num_kv_heads} {spec.head_dim_q}:{spec.head_dim_k}:{spec.head_dim_v}"
            f"{rope} {spec.dtype}{' paged' if spec.paged else ''}")


# What the columns of a shown table mean: the labels above are terse, and the config's fields are
# PortableConfig's (kernels/portable/config.py).
TABLE_LEGEND = (
    "columns:",
    "  family      the kernels the entry tunes: portable (Triton split-KV, any GPU) or latent_hopper (MLA/GLA, sm_90)",
    "  spec        kind, query/KV heads (MLA, GLA: latent heads), head dims q:k:v, +rope width, dtype, paged cache",
    "  BxSxLq      the bucket: batch x cache length (keys) x query tokens per step",
    "  config      latent_hopper: num_splits, row_split (128-row tiles split by rows), block_n (keys per block;",
    "              absent: 128 on the 64-row tile of a latent up to 256 wide, else 64), one_warpgroup (with",
    "              row_split: 64-row programs of one warpgroup, two an SM; absent: no), warp_specialized (the",
    "              shared 64-row tile's warpgroups run different code: one scores, one takes P; absent: yes",
    "              where row_split is off), alternating (with warp_specialized: the two take turns, each",
    "              scoring every other key block; absent: no), lazy_rescale (with row_split: the accumulator",
    "              rescaled only where a row's max grew past a slack; absent: no). portable:",
    "              m block_m: rows per program (query heads x query tokens); n block_n: keys per block;",
    "              d block_d: widest head-dim chunk; dv/N: output dims split over N programs (dv_split);",
    "              s num_splits: KV splits (flash-decoding); w num_warps; st num_stages: software pipeline stages;",
    "              pq preload_q: Q held in registers for the whole key loop (absent: reloaded per key block);",
    "              fc fused_combine: the kernel's last program of a row block merges the splits (absent: a launch)",
    "  tuned us    kernel time with the tuned config; default us: with the heuristic's; speed-up: default / tuned",
)


def format_table(table, path) -> str:
    from ..tables.table_file import current_kernel_version, speedup_summary

    lines = [
        f"{path}",
        f"  gpu {table.gpu}; torch {table.torch_version}; triton {table.triton_version}; {table.date}",
        *(f"  {key} kernels {version} "
          f"({'current' if version == current_kernel_version(key) else f'STALE: now {current_kernel_version(key)}'})"
          for key, version in sorted(table.kernel_versions.items())),
        *(f"  command: {command}" for command in table.commands),
        *(f"  {line}" for line in TABLE_LEGEND),
    ]
    rows = [(e.family, _spec_label(e.spec), f"{e.bucket.batch}x{e.bucket.capacity}x{e.bucket.query_len}", _config_label(e.config),
             f"{e.tuned_us:.1f}", f"{e.default_us:.1f}", f"x{e.speedup:.2f}") for e in table.sorted_entries()]
    header = ("family", "spec", "BxSxLq", "config", "tuned us", "default us", "speed-up")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    stats = speedup_summary(table.entries.values())
    if stats:
        lines.append(f"  {stats['entries']} entries; speed-up over the heuristic: median x{stats['median']:.2f}, "
                     f"worst x{stats['worst']:.2f}, best x{stats['best']:.2f}")
    return "\n".join(lines)


def _table_paths(target: Optional[str]) -> list:
    from ..tables.table_file import gpu_file_name, shipped_tables_dir, user_table_path

    if target is not None and Path(target).is_file():
        return [Path(target)]
    if target is None:
        import torch

        if torch.cuda.is_available():
            target = torch.cuda.get_device_name()
    if target is None:
        return _every_table()
    exact = [path for path in (user_table_path(target), shipped_tables_dir() / gpu_file_name(target)) if path.is_file()]
    if exact:
        return exact
    # part of a GPU's name ('H100', 'h200'): the tables whose file name holds it, case aside
    part = gpu_file_name(target).removesuffix(".json").lower()
    return [path for path in _every_table() if part in path.stem.lower()]


def _every_table() -> list:
    """The user cache's tables, then the shipped ones."""
    from ..tables.table_file import shipped_tables_dir, user_tables_dir

    return sorted(user_tables_dir().glob("*.json")) + sorted(shipped_tables_dir().glob("*.json"))


def _table_names() -> str:
    """The GPU names of the tables there are, for an error."""
    stems = sorted({path.stem.replace("_", " ") for path in _every_table()})
    return ", ".join(repr(stem) for stem in stems) or "none"


def run_configs_show(args) -> int:
    from ..tables.table_file import TableFormatError, read_table

    paths = _table_paths(args.target)
    if not paths:
        where = f"for {args.target!r}" if args.target else "in the user cache or the shipped tables"
        print(f"glacompiler configs show: no table {where} (tables: {_table_names()})", file=sys.stderr)
        return 1
    status = 0
    for path in paths:
        try:
            table = read_table(path)
        except (OSError, TableFormatError) as error:
            print(f"glacompiler configs show: {path}: {error}", file=sys.stderr)
            status = 1
            continue
        print(format_table(table, path))  # outside the try: a closed stdout (BrokenPipeError) is no table error
    return status

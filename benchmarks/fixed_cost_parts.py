"""Where a portable split kernel loses time to a plain read of its bytes: the op's own kernel, parts taken out.

The split kernel (templates/portable/) is rendered as the op renders it, edited as text into variants, and launched
by the op's own launch plan at the card's table config with the combine unfused. Each variant is timed twice by
CUDA-graph replay: the split kernel alone (the combine stubbed out) and with the combine; the table's own call
(fused where the table fuses) and a streaming read of the cache's bytes (stream_read.py, the size-matched
ceiling) are timed in the same rounds. The variants:

- base: the op's kernel unchanged (its output checked against the op's);
- known_len: the length is the capacity argument, which the full lengths here equal (no load of it before the
  split's bounds); output checked;
- no_store: the epilogue's stores predicated off at run time (nothing written; the loads and products stay);
- no_softmax: the maskless loop's online softmax taken out (scores cast straight into the PV product);
- all3: the three together.

What a variant saves against base is what that part costs (benchmarks/RESULTS.md: GTA on an H100, where the partial
stores cost up to 2.6 us and the separate combine 2.7-3.3 us). Portable-family rows only (GTA and GQA; the latent
kinds run the Hopper kernel on sm_90):

    python benchmarks/fixed_cost_parts.py --rows gta:32:4096:4 gta:8:32768:4 gqa:1:65536:1 --rounds 3
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import statistics

VARIANTS = ("base", "known_len", "no_store", "no_softmax", "all3")
CHECKED = ("base", "known_len")  # the variants that still compute the op's result
NEVER = "(rows < -num_splits)"  # false at run time (rows >= 0 < num_splits), unknown to the compiler
MASKLESS_LOOP = "    else:\n        for block_start"
PORTABLE_CASES = ("gta", "gqa")  # ab_decode.CASES that the portable kernel runs on sm_90
PAGE_SIZE = 64


def variant_source(source: str, variant: str) -> str:
    """The rendered split kernel `source` as `variant` (VARIANTS); ValueError where the source lacks a part the
    variant edits (the template changed: this script must follow it)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: one of {', '.join(VARIANTS)}, not {variant!r}")

    def need(condition: bool, part: str) -> None:
        if not condition:
            raise ValueError(f"{variant}: the rendered kernel has no {part}")

    if variant in ("known_len", "all3"):
        length = "seqlen = bounded_length(tl.load(SEQLENS + batch), capacity)"
        need(source.count(length) == 1, "single load of the length")
        source = source.replace(length, "seqlen = capacity")
    if variant in ("no_store", "all3"):
        need(source.count("# Empty rows") == 1, "epilogue marked '# Empty rows'")
        head, tail = source.split("# Empty rows")
        stores = tail.count("tl.store(")
        tail = tail.replace("mask=row_valid)", f"mask=row_valid & {NEVER})")
        tail = tail.replace("mask=row_valid[:, None])", f"mask=row_valid[:, None] & {NEVER}[:, None])")
        need(stores > 0 and tail.count(NEVER) == stores, "epilogue whose every store is masked by row_valid")
        source = head + "# Empty rows" + tail
    if variant in ("no_softmax", "all3"):
        need(source.count(MASKLESS_LOOP) == 1, "maskless key loop")
        head, loop = source.split(MASKLESS_LOOP)
        loop, count = re.subn(r"            m_new = tl\.maximum.*?p_low = p\.to\(K\.dtype\.element_ty\)\n",
                              "            p_low = scores.to(K.dtype.element_ty)\n            alpha = l_i * 0.0 + 1.0\n",
                              loop, count=1, flags=re.S)
        need(count == 1, "online softmax from m_new to p_low in the maskless loop")
        source = head + MASKLESS_LOOP + loop
    return source


@contextlib.contextmanager
def split_kernel_variant(variant: str):
    """The op's portable plans, made inside, launch `variant` of their split kernel (prepared calls are dropped on
    the way in and out, so that no plan of one variant serves another)."""
    from glacompiler.kernels.common.templates import import_generated
    from glacompiler.kernels.portable import launch as portable_launch
    from glacompiler.kernels.portable.config import PortableConfig
    from glacompiler.kernels.portable.render import render_decode_kernel
    from glacompiler.op.prepared import clear_prepared_calls

    original = portable_launch.decode_kernel_module

    def variant_module(spec, block_d, preload_q, dv_split, fused_combine=False):
        knobs = PortableConfig(block_d=block_d, preload_q=preload_q, dv_split=dv_split, num_splits=2,
                               fused_combine=fused_combine)
        return import_generated(variant_source(render_decode_kernel(spec, knobs), variant))

    clear_prepared_calls()
    portable_launch.decode_kernel_module = variant_module
    try:
        yield
    finally:
        portable_launch.decode_kernel_module = original
        clear_prepared_calls()


@contextlib.contextmanager
def combine_stubbed():
    """Split calls made inside launch their split kernel only (the partials are left unmerged)."""
    from glacompiler.kernels.common.split_buffers import SplitBuffers
    from glacompiler.op.prepared import clear_prepared_calls

    original = SplitBuffers.combine
    SplitBuffers.combine = lambda self, *args: None
    clear_prepared_calls()
    try:
        yield
    finally:
        SplitBuffers.combine = original
        clear_prepared_calls()


def op_default_scale(kwargs: dict) -> float:
    """The op's default softmax scale for these arguments (the variants' calls and the config lookup take it given)."""
    from glacompiler.spec import default_softmax_scale

    q_rope = kwargs.get("q_rope")
    return default_softmax_scale(kwargs["q"].shape[-1], 0 if q_rope is None else q_rope.shape[-1])


def table_and_split_configs(kwargs: dict, scale: float):
    """(the op's family name and config for this call, that config with its combine unfused; None where the family
    is not the portable one)."""
    from glacompiler.op.dispatch import choose_kernel, validated_call

    spec, shape, call, _, _ = validated_call(
        kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), kwargs.get("q_rope"), kwargs.get("k_rope_cache"),
        kwargs["cache_seqlens"], kwargs["page_table"], None, scale, True, None, 0.0, None, None, (-1, -1))
    family, config = choose_kernel(spec, shape, call)
    if family.name != "portable":
        return family.name, config, None
    return family.name, config, dataclasses.replace(config, fused_combine=False) if config.num_splits > 1 else config


def check_variants(call, expected) -> None:
    """Run `call` once as each variant (a variant that no longer compiles fails here, before any timing); the
    CHECKED ones must give `expected` (the op's own output)."""
    for variant in VARIANTS:
        with split_kernel_variant(variant):
            out = call()
        if variant in CHECKED:
            error = (out.float() - expected.float()).abs().max().item()
            if not error <= 2e-2:
                raise AssertionError(f"{variant}: differs from the op's output by {error}")


def timed_as(variant: str, call, stubbed: bool) -> float:
    """us of `call` as `variant` by CUDA-graph replay, the combine stubbed out or not (the plan is made at the first
    call inside and captured from there)."""
    from stream_read import graph_us

    with split_kernel_variant(variant), (combine_stubbed() if stubbed else contextlib.nullcontext()):
        return graph_us(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=["gta:32:4096:1", "gta:32:4096:4", "gta:8:32768:4",
                                                       "gta:1:65536:1", "gqa:1:65536:1"],
                        help="case:batch:cache:query_len, case gta or gqa (ab_decode.CASES), pages of 64")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for row in args.rows:
        try:
            case, batch, length, query_len = row.split(":")
            rows.append((case, int(batch), int(length), int(query_len)))
        except ValueError:
            parser.error(f"--rows: {row!r} is not case:batch:cache:query_len")
        if case not in PORTABLE_CASES or int(length) % PAGE_SIZE:
            parser.error(f"--rows: {row!r}: case one of {', '.join(PORTABLE_CASES)}, cache whole pages of {PAGE_SIZE}")

    import torch
    import triton

    import glacompiler
    from ab_decode import make_inputs
    from stream_read import StreamRead, graph_us

    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"glacompiler at {glacompiler.__file__}")
    print("# us by CUDA-graph replay, median of the rounds; 'alone': the split kernel with the combine stubbed out; "
          "of read = read us / us")
    for case, batch, length, query_len in rows:
        kwargs = make_inputs(case, batch, length, query_len, PAGE_SIZE)
        scale = op_default_scale(kwargs)
        family, table_config, config = table_and_split_configs(kwargs, scale)
        if config is None:
            print(f"\n{case} B{batch} S{length} Lq {query_len}: the {family} family runs it, not the portable kernel")
            continue
        read_bytes = sum(t.numel() * t.element_size() for t in (kwargs["k_cache"], kwargs.get("v_cache"),
                                                                 kwargs.get("k_rope_cache")) if t is not None)
        read = StreamRead(read_bytes)
        op = lambda: glacompiler.attention_with_kvcache(**kwargs, softmax_scale=scale, causal=True)  # noqa: E731
        at_config = lambda: glacompiler.attention_with_kvcache_config(  # noqa: E731
            **kwargs, config=config, softmax_scale=scale, causal=True)[0]
        check_variants(at_config, op())
        timed = {"read": [], "op (table config)": []}
        for variant in VARIANTS:
            timed[f"{variant} alone"], timed[f"{variant} + combine"] = [], []
        for _ in range(args.rounds):
            timed["read"].append(graph_us(read.call))
            timed["op (table config)"].append(graph_us(op))
            for variant in VARIANTS:
                timed[f"{variant} alone"].append(timed_as(variant, at_config, stubbed=True))
                timed[f"{variant} + combine"].append(timed_as(variant, at_config, stubbed=False))
        read_us = statistics.median(timed["read"])
        print(f"\n{case} B{batch} S{length} Lq {query_len}: {read_bytes / 1e6:.1f} MB; table {table_config}; "
              f"{read.describe()}")
        for label, values in timed.items():
            us = statistics.median(values)
            print(f"  {label:<22} {us:8.2f} us  of read {read_us / us:6.3f}  lost {us - read_us:6.2f} us  "
                  f"[{' '.join(f'{v:.1f}' for v in values)}]")
        del kwargs, read
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Issue 13's grid: the op against the roofline floor and the same run's baselines, one row per (kind, B, S, Lq).

Kinds are the paper's (ab_decode.CASES: MLA 1x512, GLA-2 2x256, GLA-8 8x256 with 128 query heads and a 64-wide
rope key; GTA 16 query heads over 4 tied heads of 128 with the rope key; GQA 32/8/128); bf16, page 64 with a
permuted page table (--page-size 0: contiguous caches, for every contender), full lengths, causal. Each row's data
is built once on the GPU from a seed and every contender runs it in each round, the order rotating between rounds;
the table gives the median over the rounds of each one's kernel time by CUDA-graph replay (median of
do_bench_cudagraph). Floor = max(bytes / copy bandwidth, flops / bf16 matmul rate), both measured in the same run
(bench_decode.copy_bandwidth and matmul_rate), bytes counted with one shared rope key. Contenders:
- ours: glacompiler.attention_with_kvcache as users call it (the op's own kernel family and config);
- FA3: FlashAttention-3's flash_attn_with_kvcache (flash-attention `hopper/`) where `flash_attn_interface`
  imports and its build holds the head dims: MLA/GLA with `qv` (the rope key copied into each latent head, as the
  paper's kernel takes it), GQA as it is, GTA as K = [the tied state's first Dq channels | rope] and V the tied
  state (copies: FA3 has no tied form);
- SDPA (GQA): torch's scaled_dot_product_attention with enable_gqa on the same keys in logical order;
- read (rows whose floor is set by bytes): a streaming read of the row's bytes (stream_read.py), the size-matched
  ceiling: the floor's bandwidth is a 2 GiB copy's (read plus written), which a read alone beats at large sizes and
  a short row's launch, ramp-up and tail pull under. "ours vs read" is the share of that ceiling the op reaches.
"""
from __future__ import annotations

import json
import statistics

import torch
import torch.nn.functional as F
import triton

import glacompiler
from glacompiler.cli import package_version
from glacompiler.op.dispatch import kernel_family_for
from glacompiler.op.validation import validate_inputs
from glacompiler.reference import logical_cache

from ab_decode import make_inputs
from bench_decode import copy_bandwidth, matmul_rate, problem_cost
from stream_read import StreamRead, graph_us

# (batch, cache length, query tokens): the rows of issue 13's table
ISSUE_ROWS = [(128, 8192, 1), (128, 8192, 2), (8, 32768, 1), (32, 4096, 4), (1, 65536, 1)]


def grid_rows(neighbours: bool, shapes: str = "") -> list[tuple[int, int, int]]:
    """ISSUE_ROWS, or with neighbours every (B, S) of it at Lq 1, 2 and 4; shapes ("1x65536,32x4096") keeps the rows
    of those (B, S) only, so that a run can finish the rows an earlier one's time limit cut."""
    rows = list(ISSUE_ROWS)
    if neighbours:
        pairs = dict.fromkeys((batch, length) for batch, length, _ in ISSUE_ROWS)
        rows = [(batch, length, query_len) for batch, length in pairs for query_len in (1, 2, 4)]
    if not shapes:
        return rows
    grid = {f"{batch}x{length}": (batch, length) for batch, length, _ in rows}
    requested = [shape.strip() for shape in shapes.split(",")]
    unknown = [shape for shape in requested if shape not in grid]
    if unknown:
        raise ValueError(f"shapes: {', '.join(map(repr, unknown))} not in the grid (its BxS: {', '.join(grid)})")
    wanted = {grid[shape] for shape in requested}
    return [row for row in rows if row[:2] in wanted]


def fa3_function():
    """flash_attn_with_kvcache of FlashAttention-3, or None where it is not installed."""
    try:
        from flash_attn_interface import flash_attn_with_kvcache
    except ImportError:
        return None
    return flash_attn_with_kvcache


def fa3_call(fa3, name: str, kwargs: dict, scale: float):
    """A closure running FA3 on the op's inputs (the same memory where FA3 takes the same layout)."""
    common = dict(cache_seqlens=kwargs["cache_seqlens"], page_table=kwargs["page_table"], softmax_scale=scale,
                  causal=True)
    k_cache = kwargs["k_cache"]
    if name in ("mla", "gla2", "gla8", "gta"):  # the shared rope key, once per KV head (FA3 has no shared key)
        rope_per_head = kwargs["k_rope_cache"][:, :, None, :].expand(-1, -1, k_cache.shape[2], -1)
    if name in ("mla", "gla2", "gla8"):  # scores from q_rope . k_rope + q . latent; output from the latent
        k_rope = rope_per_head.contiguous()
        return lambda: fa3(kwargs["q_rope"], k_rope, k_cache, qv=kwargs["q"], **common)
    if name == "gta":  # K = [first Dq channels of the tied state | the rope key], V = the tied state
        nope = kwargs["q"].shape[-1]
        keys = torch.cat([k_cache[..., :nope], rope_per_head], dim=-1).contiguous()
        query = torch.cat([kwargs["q"], kwargs["q_rope"]], dim=-1).contiguous()
        return lambda: fa3(query, keys, k_cache, **common)
    return lambda: fa3(kwargs["q"], k_cache, kwargs["v_cache"], **common)


def sdpa_call(kwargs: dict, scale: float):
    """SDPA on the GQA row's keys in logical order; for Lq > 1 a bottom-right causal mask (the decode layout)."""
    lengths = kwargs["cache_seqlens"]
    keys = logical_cache(kwargs["k_cache"], kwargs["page_table"], lengths).transpose(1, 2).contiguous()
    values = logical_cache(kwargs["v_cache"], kwargs["page_table"], lengths).transpose(1, 2).contiguous()
    query = kwargs["q"].transpose(1, 2)
    query_len, length = query.shape[2], keys.shape[2]
    mask = None
    if query_len > 1:
        positions = torch.arange(length, device=query.device)
        mask = positions[None, :] <= (length - query_len + torch.arange(query_len, device=query.device))[:, None]
    return lambda: F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale,
                                                  enable_gqa=True).transpose(1, 2)


def rotating_rounds(contenders: dict, rounds: int) -> dict:
    """{label: one graph_us a round}: every contender timed in each round, the order rotating between rounds so
    that none always runs first."""
    times = {label: [] for label in contenders}
    labels = list(contenders)
    for round_index in range(rounds):
        for label in labels[round_index % len(labels):] + labels[:round_index % len(labels)]:
            times[label].append(graph_us(contenders[label]))
    return times


def check_agreement(theirs: torch.Tensor, ours: torch.Tensor, label: str) -> float:
    """The largest output difference; a baseline that computes something else is not timed against us."""
    difference = (theirs.float() - ours.float()).abs().max().item()
    if not difference <= 1e-2 * (1 + ours.float().abs().max().item()):  # bf16 rounding is ~4e-3 of a value
        raise RuntimeError(f"{label} and our op disagree by {difference:.3g}: the adaptor maps a different problem")
    return difference


def time_row(name: str, batch: int, length: int, query_len: int, page_size: int, rounds: int, fa3,
             bandwidth: float, flop_rate: float) -> dict:
    kwargs = make_inputs(name, batch, length, query_len, page_size)
    spec, _ = validate_inputs(kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), kwargs.get("q_rope"),
                              kwargs.get("k_rope_cache"), kwargs["cache_seqlens"], kwargs["page_table"], None, None,
                              None)
    scale = (spec.head_dim_q + spec.rope_dim) ** -0.5
    ours = lambda: glacompiler.attention_with_kvcache(**kwargs, softmax_scale=scale, causal=True)  # noqa: E731
    contenders = {"ours": ours}
    notes = []
    reference = ours()
    if fa3 is not None:
        call = fa3_call(fa3, name, kwargs, scale)
        try:
            theirs = call()
        except (RuntimeError, ValueError) as error:  # a head dim its build leaves out
            notes.append(f"FA3: {str(error).splitlines()[0][:80]}")
        else:
            notes.append(f"|ours - FA3| {check_agreement(theirs, reference, 'FA3'):.1e}")
            contenders["fa3"] = call
    if name == "gqa":
        call = sdpa_call(kwargs, scale)
        notes.append(f"|ours - SDPA| {check_agreement(call(), reference, 'SDPA'):.1e}")
        if query_len > 1:
            notes.append("SDPA under a dense causal mask: its math path")
        contenders["sdpa"] = call
    family = kernel_family_for(**kwargs)
    bytes_moved, flops = problem_cost(spec, kwargs["q"], kwargs["cache_seqlens"])
    bytes_s, flops_s = bytes_moved / bandwidth, flops / flop_rate
    floor = max(bytes_s, flops_s) * 1e6
    if bytes_s >= flops_s:  # a floor set by bytes: the read of those bytes is its ceiling
        read = StreamRead(bytes_moved)
        notes.append(read.describe())
        contenders["read"] = read.call
    times = rotating_rounds(contenders, rounds)
    return dict(case=name, batch=batch, seqlen=length, q_len=query_len, floor_us=floor, kernel=family.name,
                rounds=times,
                us={label: statistics.median(values) for label, values in times.items()}, notes=notes)


def format_row(row: dict) -> str:
    us, floor = row["us"], row["floor_us"]

    # Three decimals: the goals are at two (0.80 of the floor, 1.0x a baseline), and a rounded 0.80 may be 0.797.
    def cell(label):
        return f"{us[label]:.1f} ({floor / us[label]:.3f})" if label in us else "-"

    def ratio(label):
        return f"{us[label] / us['ours']:.3f}x" if label in us else "-"

    return (f"| {row['case']} | {row['batch']} | {row['seqlen'] // 1024}K | {row['q_len']} | {floor:.1f} | "
            f"{cell('ours')} | {cell('fa3')} | {ratio('fa3')} | {cell('sdpa')} | {ratio('sdpa')} | {cell('read')} | "
            f"{ratio('read')} | {row['kernel']} | {'; '.join(row['notes'])} |")


def run_grid(kinds: list[str], rounds: int, neighbours: bool, page_size: int, json_path: str | None,
             shapes: str = "") -> None:
    rows = grid_rows(neighbours, shapes)  # (a shape not in the grid fails here, before anything is measured)
    fa3 = fa3_function()
    bandwidth, flop_rate = copy_bandwidth(), matmul_rate()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, glacompiler "
          f"{package_version()}; FA3 {'installed' if fa3 else 'not installed'}")
    layout = f"page {page_size}" if page_size else "contiguous caches"
    print(f"# copy {bandwidth / 1e9:.0f} GB/s, bf16 matmul {flop_rate / 1e12:.0f} TFLOP/s; {layout}, bf16, "
          f"full lengths, causal; median of {rounds} interleaved rounds, CUDA-graph replay")
    print("| case | B | S | Lq | floor us | ours us (of floor) | FA3 us (of floor) | ours vs FA3 | "
          "SDPA us (of floor) | ours vs SDPA | read us (of floor) | ours vs read | our kernel | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in kinds:
        for batch, length, query_len in rows:
            row = time_row(name, batch, length, query_len, page_size, rounds, fa3, bandwidth, flop_rate)
            results.append(row)
            print(format_row(row), flush=True)
            torch.cuda.empty_cache()
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(dict(gpu=torch.cuda.get_device_name(), bandwidth=bandwidth, flop_rate=flop_rate,
                           results=results), handle, indent=1)

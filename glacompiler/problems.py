"""Random decode-attention problems for tests, benchmarks and the tuner, and FlashAttention's error rule.

make_decode_problem builds one problem the way FlashMLA's tests do: cache slots past each length hold NaN and
unused page-table entries hold a huge page id, so an out-of-bounds read shows up as NaN or a crash.
timing_inputs builds the tuner's and benchmarks' full-length problems on the device, several sets that share
one page pool so that repeated calls do not find their cache in L2."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
from torch import Tensor

from .reference import attention_with_kvcache_reference
from .spec import AttentionSpec, ProblemShape, dtype_name

UNUSED_PAGE_ID = 2**30


@dataclasses.dataclass
class DecodeProblem:
    spec: AttentionSpec
    kwargs: dict  # keyword arguments of attention_with_kvcache (q and k_cache included)

    def reference(self, compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        kwargs = dict(self.kwargs)
        return attention_with_kvcache_reference(
            kwargs.pop("q"), kwargs.pop("k_cache"), kwargs.pop("v_cache"), compute_dtype=compute_dtype,
            out_dtype=compute_dtype if compute_dtype == torch.float64 else None, **kwargs,
        )


def make_decode_problem(
    spec: AttentionSpec,
    batch: int,
    query_len: int,
    capacity: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    page_size: int = 0,
    seqlens: Optional[Sequence[int]] = None,
    poison: bool = True,
    mask: Optional[str] = None,  # None | "bool" | "additive"
    mask_rows: str = "token",  # the mask varies per "key" only [B,1,1,S], per "token" [B,1,Lq,S], per "head" [B,H,Lq,S]
    causal: bool = True,
    generator: Optional[torch.Generator] = None,
) -> DecodeProblem:
    """A random problem for `spec`'s head layout (its dtype and paging come from `dtype` and `page_size`); seqlens
    default to random lengths in [0, capacity] (the last one full)."""
    device = torch.device(device)
    gen = generator or torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    if seqlens is None:
        lengths = torch.randint(0, capacity + 1, (batch,), generator=gen)
        lengths[-1] = capacity
    else:
        lengths = torch.tensor(list(seqlens))
    q = randn(batch, query_len, spec.num_q_heads, spec.head_dim_q)
    q_rope = randn(batch, query_len, spec.num_q_heads, spec.rope_dim) if spec.rope_dim else None

    if page_size:
        pages_per_seq = -(-capacity // page_size)
        pages_needed = [-(-int(n) // page_size) for n in lengths]
        num_pages = sum(pages_needed) + 2  # two spare pages nobody references
        order = torch.randperm(num_pages, generator=gen)
        page_table = torch.full((batch, pages_per_seq), UNUSED_PAGE_ID, dtype=torch.int32)
        taken = 0
        for b, needed in enumerate(pages_needed):
            page_table[b, :needed] = order[taken : taken + needed].to(torch.int32)
            taken += needed
        lead = (num_pages, page_size)
        capacity = pages_per_seq * page_size  # the logical capacity the mask spans
    else:
        page_table = None
        lead = (batch, capacity)
    k_cache = randn(*lead, spec.num_kv_heads, spec.head_dim_k)
    v_cache = None if spec.tied else randn(*lead, spec.num_kv_heads, spec.head_dim_v)
    k_rope_cache = randn(*lead, spec.rope_dim) if spec.rope_dim else None

    if poison:
        stale = _stale_slots(lengths, capacity, page_table, lead)
        for cache in (k_cache, v_cache, k_rope_cache):
            if cache is not None:
                cache.view(-1, *cache.shape[2:])[stale.to(device)] = float("nan")

    attn_mask = None
    if mask is not None:
        mask_shape = {"key": (batch, 1, 1, capacity), "token": (batch, 1, query_len, capacity),
                      "head": (batch, spec.num_q_heads, query_len, capacity)}[mask_rows]
        allowed = torch.rand(*mask_shape, generator=gen) < 0.7
        allowed[..., 0] = False  # the first key is masked for everyone: a key block can be ruled out
        if mask == "bool":
            attn_mask = allowed.to(device)
        else:
            bias = torch.randn(*mask_shape, generator=gen)
            attn_mask = torch.where(allowed, bias, float("-inf")).to(device=device, dtype=dtype)

    kwargs = dict(
        q=q, k_cache=k_cache, v_cache=v_cache, q_rope=q_rope, k_rope_cache=k_rope_cache,
        cache_seqlens=lengths.to(device=device, dtype=torch.int32),
        page_table=None if page_table is None else page_table.to(device), attn_mask=attn_mask, causal=causal,
    )
    storage = spec.with_storage(dtype=dtype_name(dtype), paged=page_table is not None)
    return DecodeProblem(storage, kwargs)


def timing_inputs(spec: AttentionSpec, shape: ProblemShape, device: torch.device, sets: int, seed: int = 0) -> list:
    """`sets` keyword-argument dicts for attention_with_kvcache_config, every sequence full (length = capacity).

    Paged caches share one page pool; each set's page table takes its own random pages, so the sets together
    span sets x one set's bytes. Contiguous caches get separate tensors per set."""
    dtype = spec.torch_dtype
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*dims):
        return torch.randn(*dims, device=device, dtype=dtype, generator=generator)

    batch, capacity, query_len = shape.batch, shape.capacity, shape.query_len
    v_dim = None if spec.tied else spec.head_dim_v
    lengths = torch.full((batch,), capacity, dtype=torch.int32, device=device)
    if shape.page_size:
        pages_per_seq = -(-capacity // shape.page_size)
        pool = sets * batch * pages_per_seq
        lead = (pool, shape.page_size)
        order = torch.randperm(pool, device=device, generator=generator).to(torch.int32)
        tables = order.view(sets, batch, pages_per_seq)
        shared_caches = (randn(*lead, spec.num_kv_heads, spec.head_dim_k),
                         None if v_dim is None else randn(*lead, spec.num_kv_heads, v_dim),
                         randn(*lead, spec.rope_dim) if spec.rope_dim else None)
    inputs = []
    for index in range(sets):
        if shape.page_size:
            k_cache, v_cache, k_rope_cache = shared_caches
            page_table = tables[index].contiguous()
        else:
            lead = (batch, capacity)
            k_cache = randn(*lead, spec.num_kv_heads, spec.head_dim_k)
            v_cache = None if v_dim is None else randn(*lead, spec.num_kv_heads, v_dim)
            k_rope_cache = randn(*lead, spec.rope_dim) if spec.rope_dim else None
            page_table = None
        inputs.append(dict(
            q=randn(batch, query_len, spec.num_q_heads, spec.head_dim_q),
            k_cache=k_cache, v_cache=v_cache,
            q_rope=randn(batch, query_len, spec.num_q_heads, spec.rope_dim) if spec.rope_dim else None,
            k_rope_cache=k_rope_cache, cache_seqlens=lengths, page_table=page_table,
        ))
    return inputs


def _stale_slots(lengths: Tensor, capacity: int, page_table: Optional[Tensor], lead: tuple[int, int]) -> Tensor:
    """Boolean over flattened (lead0 * lead1) cache slots that no valid token occupies."""
    stale = torch.ones(lead[0] * lead[1], dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        positions = torch.arange(int(n))
        if page_table is None:
            stale[b * lead[1] + positions] = False
        else:
            page_size = lead[1]
            pages = page_table[b, positions // page_size].to(torch.long)
            stale[pages * page_size + positions % page_size] = False
    return stale


def rounding_atol(reference: Tensor, dtype: torch.dtype) -> float:
    """FlashAttention's forward atol: twice the rounding error of the dtype at the output's scale."""
    ref = reference.to(dtype)
    return 2 * (ref + 0.3 - 0.3 - ref).abs().max().item()


def max_error(actual: Tensor, expected: Tensor) -> float:
    """Max abs difference; positions where both are -inf (lse of empty rows) count as equal."""
    actual, expected = actual.double(), expected.double()
    both_inf = torch.isinf(actual) & torch.isinf(expected) & (actual.sign() == expected.sign())
    diff = torch.where(both_inf, torch.zeros_like(actual), (actual - expected).abs())
    return float("nan") if torch.isnan(diff).any() else diff.max().item() if diff.numel() else 0.0


def check_fa_rule(out: Tensor, lse: Tensor, problem: DecodeProblem, dtype_for_baseline: Optional[torch.dtype] = None) -> dict:
    """Kernel error against a float64 reference must be at most 2x PyTorch's error in the same precision
    (plus the dtype's rounding atol). Returns the errors; raises AssertionError on failure."""
    dtype = dtype_for_baseline or out.dtype
    ref_out, ref_lse = problem.reference(torch.float64)
    pt_out, pt_lse = problem.reference(dtype)
    atol = rounding_atol(ref_out, dtype)
    errors = {
        "out": max_error(out, ref_out.to(out.device)),
        "out_pt": max_error(pt_out, ref_out),
        "lse": max_error(lse, ref_lse.to(lse.device)),
        "lse_pt": max_error(pt_lse, ref_lse),
        "atol": atol,
    }
    assert not torch.isnan(out).any(), f"NaN in output: {errors}"
    assert errors["out"] <= 2 * errors["out_pt"] + atol, f"output error too large: {errors}"
    lse_atol = max(atol, 1e-5 if dtype == torch.float32 else 1e-3)
    assert errors["lse"] <= 2 * errors["lse_pt"] + lse_atol, f"lse error too large: {errors}"
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse).to(lse.device)), "empty rows disagree (lse = -inf)"
    return errors

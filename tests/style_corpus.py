"""A generated corpus of decode attention as people write it (issue 12, section 1): no tests here, see
tests/test_style_corpus.py.

Each case is one decode step written out as Python source (readable in a failure message): projections of the
new tokens, the cache written, the KV heads shared, the scores scaled and masked, the softmax, the output laid
back out. A Style picks one way for each axis; `corpus()` samples the product deterministically and adds
negatives (sites our op does not compute, which must be left alone). Dims include coinciding sizes (head dim
== cache length, heads x head dim == cache length == model width, batch == heads, Hq == Hkv, MQA) so a match
that confused two axes of equal size would give a wrong result, not a lucky right one.

The source is compiled under a file name of its own (style_case_<n>.py, registered in linecache), so the
report's source line of each site names its case."""
from __future__ import annotations

import dataclasses
import linecache
import math
import random
from typing import Optional

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Dims:
    name: str
    B: int
    L: int  # new tokens this step
    HQ: int
    HKV: int
    D: int
    S: int  # cache capacity
    W: int  # model width

    @property
    def kind(self) -> str:
        if self.HQ == self.HKV:
            return "mha"
        return "mqa" if self.HKV == 1 else "gqa"


DIMS = [
    Dims("base", B=2, L=1, HQ=4, HKV=2, D=8, S=12, W=32),
    Dims("head_dim_eq_cache_len", B=2, L=1, HQ=4, HKV=2, D=16, S=16, W=32),
    Dims("heads_x_dim_eq_cache_len_eq_width", B=2, L=1, HQ=4, HKV=2, D=8, S=32, W=32),
    Dims("batch_eq_heads", B=4, L=1, HQ=4, HKV=2, D=8, S=12, W=32),
    Dims("mha", B=2, L=1, HQ=4, HKV=4, D=8, S=12, W=32),
    Dims("mqa", B=2, L=1, HQ=4, HKV=1, D=8, S=12, W=32),
    Dims("multi_token", B=2, L=3, HQ=4, HKV=2, D=8, S=12, W=32),
    Dims("batch_eq_kv_heads_eq_tokens", B=2, L=2, HQ=4, HKV=2, D=8, S=16, W=32),
    Dims("mha_batch1_dim_eq_len", B=1, L=1, HQ=2, HKV=2, D=16, S=16, W=32),
]

# The axes, and the options each attention kernel takes.
QUERIES = ["linear", "mm", "bmm", "einsum", "fused_split", "conv1d", "rope", "qnorm"]
LAYOUTS = ["heads_first", "seq_first"]
WRITES = ["index_copy", "index_put", "slice", "cat"]
SHARING = {"sdpa": ["enable_gqa", "repeat_kv", "repeat_interleave"],
           "matmul": ["repeat_kv", "repeat_interleave"],
           "einsum": ["group_einsum", "repeat_kv", "repeat_interleave"]}
SCALES = {"sdpa": ["sdpa_default", "sdpa_scale", "in_query"],
          "matmul": ["div_sqrt", "mul", "in_query"],
          "einsum": ["div_sqrt", "mul", "in_query"]}
MASKS = {"sdpa": ["sdpa_bool", "sdpa_additive", "is_causal", "none"],
         "matmul": ["bool_fill", "additive", "where_min", "none"],
         "einsum": ["bool_fill", "additive", "where_min", "none"]}
SOFTMAXES = ["F.softmax", "method", "fp32", "decomposed"]
OUTPUTS = ["transpose_reshape", "einsum"]
KERNELS = ["sdpa", "matmul", "einsum"]

NEGATIVES = ["softmax_over_heads", "softmax_over_queries", "probs_returned", "router_einsum", "values_by_query",
             "fill_not_negligible", "negative_scale"]


@dataclasses.dataclass(frozen=True)
class Style:
    kernel: str
    query: str
    layout: str
    write: str
    sharing: str
    scale: str
    mask: str
    softmax: str  # '' for SDPA
    output: str
    dims: Dims
    negative: str = ""

    def describe(self) -> str:
        parts = [self.kernel, self.query, self.layout, self.write, self.sharing, self.scale, self.mask,
                 self.softmax or "-", self.output, self.dims.name]
        return ("NEGATIVE " + self.negative + " " if self.negative else "") + "/".join(parts)


def sample_styles(count: int, seed: int = 12) -> list:
    """`count` positive styles, sampled deterministically (kernels in turn, every other axis at random)."""
    styles = []
    for index in range(count):
        rng = random.Random(f"{seed}-{index}")
        kernel = KERNELS[index % len(KERNELS)]
        styles.append(Style(
            kernel=kernel, query=rng.choice(QUERIES), layout=rng.choice(LAYOUTS), write=rng.choice(WRITES),
            sharing=rng.choice(SHARING[kernel]), scale=rng.choice(SCALES[kernel]), mask=rng.choice(MASKS[kernel]),
            softmax="" if kernel == "sdpa" else rng.choice(SOFTMAXES), output=rng.choice(OUTPUTS),
            dims=rng.choice(DIMS),
        ))
    return styles


def _manual_styles(label: str, count: int, seed: int, scale=None, mask: str = "", dims: list = DIMS,
                   sharing: Optional[dict] = None) -> list:
    """`count` matmul and einsum styles (in turn), the other axes sampled as the positives', with the scale (a
    function of the index) or the mask given: positives appended to the corpus, so that the sampled ones stay."""
    styles = []
    for index in range(count):
        rng = random.Random(f"{seed}-{label}-{index}")
        kernel = ["matmul", "einsum"][index % 2]
        styles.append(Style(
            kernel=kernel, query=rng.choice(QUERIES), layout=rng.choice(LAYOUTS), write=rng.choice(WRITES),
            sharing=rng.choice((sharing or SHARING)[kernel]),
            scale=scale(index) if scale else rng.choice(SCALES[kernel]),
            mask=mask or rng.choice(MASKS[kernel]), softmax=rng.choice(SOFTMAXES), output=rng.choice(OUTPUTS),
            dims=rng.choice(dims),
        ))
    return styles


TENSOR_SCALES = ["tensor", "per_head_tensor"]  # a learned temperature (0-d), a learned scale per head


def tensor_scale_styles(count: int = 12, seed: int = 12) -> list:
    return _manual_styles("tensor-scale", count, seed, scale=lambda index: TENSOR_SCALES[(index // 2) % 2])


def head_mask_styles(count: int = 6, seed: int = 12) -> list:
    """MHA with a boolean mask per head (a mask per KV head, which the op takes per query head)."""
    return _manual_styles("head-mask", count, seed, mask="per_head", dims=[d for d in DIMS if d.HQ == d.HKV])


def query_head_mask_styles(count: int = 6, seed: int = 12) -> list:
    """GQA with a boolean mask per query head, K and V repeated per group: the mask's heads axis is read as KV head
    and group. Not here, each rewritten as before with the rows the mask tells apart taken as query positions (the
    report then names an MHA of Lq = the group's heads): a group einsum's mask, [B, Hkv, G, L, S] negated after the
    view, and MQA's, whose heads axis holds the group alone."""
    repeated = {kernel: [way for way in ways if way != "group_einsum"] for kernel, ways in SHARING.items()}
    return _manual_styles("query-head-mask", count, seed, mask="per_head",
                          dims=[d for d in DIMS if 1 < d.HKV < d.HQ], sharing=repeated)


def negative_styles(seed: int = 12) -> list:
    """Each negative on a few plain manual styles (the query from a projection, as the positives)."""
    styles = []
    for index, negative in enumerate(NEGATIVES):
        for variant in range(3):
            rng = random.Random(f"{seed}-negative-{index}-{variant}")
            kernel = ["matmul", "einsum"][variant % 2]
            # (over one query token neither a softmax over the queries nor V per query row is a negative)
            several_queries = negative in ("softmax_over_queries", "values_by_query")
            dims = rng.choice([d for d in DIMS if d.L > 1]) if several_queries else rng.choice(DIMS)
            mask = rng.choice(["bool_fill", "none"])
            if negative == "fill_not_negligible":
                mask = "bool_fill"
            styles.append(Style(
                kernel=kernel, query=rng.choice(["linear", "fused_split", "rope"]), layout=rng.choice(LAYOUTS),
                write=rng.choice(["index_copy", "cat"]), sharing=rng.choice(SHARING[kernel]),
                scale=rng.choice(["div_sqrt", "mul"]), mask=mask, softmax=rng.choice(SOFTMAXES),
                output="transpose_reshape", dims=dims, negative=negative,
            ))
    return styles


# ---- source generation --------------------------------------------------------------------------------------


class Source:
    def __init__(self):
        self.lines: list = []

    def __call__(self, line: str) -> None:
        self.lines.append("    " + line)


def _repeat(name: str, head_axis: int, style: Style) -> str:
    """KV heads repeated to the query heads along head_axis (1: [B, H, S, D], 2: [B, S, H, D])."""
    d = style.dims
    group = d.HQ // d.HKV
    if style.sharing == "repeat_interleave":
        return f"{name}.repeat_interleave({group}, dim={head_axis})"
    if head_axis == 1:  # Hugging Face's repeat_kv
        return (f"{name}[:, :, None, :, :].expand({name}.shape[0], {d.HKV}, {group}, {name}.shape[2], {d.D})"
                f".reshape({name}.shape[0], {d.HQ}, {name}.shape[2], {d.D})")
    return (f"{name}[:, :, :, None, :].expand({name}.shape[0], {name}.shape[1], {d.HKV}, {group}, {d.D})"
            f".reshape({name}.shape[0], {name}.shape[1], {d.HQ}, {d.D})")


def _projections(src: Source, style: Style) -> None:
    """q [B, L, HQ, D], k_new and v_new [B, L, HKV, D]."""
    d = style.dims
    widths = {"q": d.HQ * d.D, "k": d.HKV * d.D, "v": d.HKV * d.D}
    heads = {"q": d.HQ, "k": d.HKV, "v": d.HKV}
    names = {"q": "q", "k": "k_new", "v": "v_new"}
    query = style.query
    if query in ("fused_split", "conv1d"):
        if query == "fused_split":
            src("qkv = F.linear(x, w_qkv)")
        else:  # GPT-2's Conv1D: addmm of the flattened tokens with a [in, out] weight
            src(f"qkv = torch.addmm(b_qkv, x.view(-1, {d.W}), w_qkv_t).view({d.B}, {d.L}, -1)")
        src(f"q, k_new, v_new = qkv.split([{widths['q']}, {widths['k']}, {widths['v']}], dim=-1)")
        for part in "qkv":
            src(f"{names[part]} = {names[part]}.view({d.B}, {d.L}, {heads[part]}, {d.D})")
    else:
        for part in "qkv":
            if query == "mm":
                src(f"{names[part]} = torch.mm(x.view({d.B * d.L}, {d.W}), w_{part}.t()).view({d.B}, {d.L}, "
                    f"{heads[part]}, {d.D})")
            elif query == "bmm":  # per-head weights [H, W, D]: the heads are an axis of the product itself
                src(f"{names[part]} = torch.bmm(x.view(1, {d.B * d.L}, {d.W}).expand({heads[part]}, -1, -1), "
                    f"w_{part}.view({heads[part]}, {d.D}, {d.W}).transpose(1, 2)).view({heads[part]}, {d.B}, {d.L}, "
                    f"{d.D}).permute(1, 2, 0, 3)")
            elif query == "einsum":
                src(f"{names[part]} = torch.einsum('blw,hdw->blhd', x, w_{part}.view({heads[part]}, {d.D}, {d.W}))")
            else:
                src(f"{names[part]} = F.linear(x, w_{part}).view({d.B}, {d.L}, {heads[part]}, {d.D})")
    if query == "rope":
        src("freqs = positions[:, None].float() * inv_freq[None, :]")
        src("cos = torch.cat([freqs, freqs], dim=-1).cos()[None, :, None, :]")
        src("sin = torch.cat([freqs, freqs], dim=-1).sin()[None, :, None, :]")
        half = d.D // 2
        for name in ("q", "k_new"):
            src(f"{name} = {name} * cos + torch.cat([-{name}[..., {half}:], {name}[..., :{half}]], dim=-1) * sin")
    if query == "qnorm":
        src("q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) * q_norm")
        src("k_new = k_new * torch.rsqrt(k_new.pow(2).mean(-1, keepdim=True) + 1e-6) * k_norm")
    if style.scale == "in_query":
        src(f"q = q * {d.D ** -0.5!r}")


def _cache_write(src: Source, style: Style) -> str:
    """Writes k_new / v_new; leaves k, v: the whole cache ([B, HKV, KS, D] or [B, KS, HKV, D])."""
    heads_first = style.layout == "heads_first"
    seq = 2 if heads_first else 1
    if heads_first:
        src("k_new, v_new = k_new.transpose(1, 2), v_new.transpose(1, 2)")
    if style.write == "cat":
        src(f"k = torch.cat([k_cache, k_new], dim={seq})")
        src(f"v = torch.cat([v_cache, v_new], dim={seq})")
        return "k, v"
    if style.write == "index_copy":
        src(f"k_cache.index_copy_({seq}, positions, k_new)")
        src(f"v_cache.index_copy_({seq}, positions, v_new)")
    elif style.write == "index_put":
        index = "[:, :, positions]" if heads_first else "[:, positions]"
        src(f"k_cache{index} = k_new")
        src(f"v_cache{index} = v_new")
    else:
        start = start_position(style)
        index = f"[:, :, {start}:{start + style.dims.L}]" if heads_first else f"[:, {start}:{start + style.dims.L}]"
        src(f"k_cache{index} = k_new")
        src(f"v_cache{index} = v_new")
    if style.mask == "none":  # no mask: the cache read up to the last written token
        end = start_position(style) + style.dims.L
        index = f"[:, :, :{end}]" if heads_first else f"[:, :{end}]"
        src(f"k, v = k_cache{index}, v_cache{index}")
    else:
        src("k, v = k_cache, v_cache")
    return ""


def start_position(style: Style) -> int:
    """Position of the first new token."""
    d = style.dims
    return d.S if style.write == "cat" else d.S - d.L - 2


def key_count(style: Style) -> int:
    d = style.dims
    if style.write == "cat":
        return d.S + d.L
    return start_position(style) + d.L if style.mask == "none" else d.S


def _mask_tensors(src: Source, style: Style) -> None:
    """allowed [B, 1, L, KS]: key j is visible to new token i iff j <= its position and j < the length."""
    if style.mask in ("none", "is_causal"):
        return
    keys = key_count(style)
    src(f"keys = torch.arange({keys})")
    src("allowed = ((keys[None, None, :] <= positions[None, :, None]) & "
        "(keys[None, None, :] < lengths[:, None, None]))[:, None]")
    if style.mask == "per_head":
        src("allowed = allowed & head_mask")
    if style.mask in ("additive", "sdpa_additive"):
        src("bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)")


def _softmax(src: Source, style: Style, scores: str, dim: int) -> str:
    if style.softmax == "F.softmax":
        return f"F.softmax({scores}, dim={dim})"
    if style.softmax == "method":
        return f"{scores}.softmax({dim})"
    if style.softmax == "fp32":
        return f"F.softmax({scores}, dim={dim}, dtype=torch.float32).to(q.dtype)"
    src(f"shifted = ({scores} - {scores}.amax({dim}, keepdim=True)).exp()")
    return f"shifted / shifted.sum({dim}, keepdim=True)"


def _scaled_and_masked(src: Source, style: Style, grouped: bool) -> None:
    d = style.dims
    if style.negative == "negative_scale":
        src("scores = scores * -0.25")
    elif style.scale == "div_sqrt":
        src(f"scores = scores / math.sqrt({d.D})")
    elif style.scale == "mul":
        src(f"scores = scores * {d.D ** -0.5!r}")
    elif style.scale == "tensor":
        src("scores = scores * temperature")
    elif style.scale == "per_head_tensor":
        shape = f"1, {d.HKV}, {d.HQ // d.HKV}, 1, 1" if grouped else f"1, {d.HQ}, 1, 1"
        src(f"scores = scores * head_scale.view({shape})")
    mask = "allowed" if not grouped else f"allowed.view({d.B}, 1, 1, {d.L}, -1)"
    if style.mask == "per_head" and grouped:
        mask = f"allowed.view({d.B}, {d.HKV}, {d.HQ // d.HKV}, {d.L}, -1)"
    fill = "-1.0" if style.negative == "fill_not_negligible" else "float('-inf')"
    if style.mask in ("bool_fill", "per_head"):
        src(f"scores = scores.masked_fill(~{mask}, {fill})")
    elif style.mask == "additive":
        bias = "bias" if not grouped else f"bias.view({d.B}, 1, 1, {d.L}, -1)"
        src(f"scores = scores + {bias}")
    elif style.mask == "where_min":
        src(f"scores = torch.where({mask}, scores, torch.finfo(scores.dtype).min)")


def _attention_sdpa(src: Source, style: Style) -> None:
    if style.layout == "seq_first":
        src("k, v = k.transpose(1, 2), v.transpose(1, 2)")
    src("q = q.transpose(1, 2)")
    if style.sharing != "enable_gqa" and style.dims.HQ != style.dims.HKV:
        src(f"k = {_repeat('k', 1, style)}")
        src(f"v = {_repeat('v', 1, style)}")
    args = ["q", "k", "v"]
    if style.mask == "sdpa_bool":
        args.append("attn_mask=allowed")
    elif style.mask == "sdpa_additive":
        args.append("attn_mask=bias")
    elif style.mask == "is_causal":
        args.append("is_causal=True")
    if style.scale == "sdpa_scale":
        args.append("scale=0.3")
    elif style.scale == "in_query":
        args.append("scale=1.0")
    if style.sharing == "enable_gqa":
        args.append("enable_gqa=True")
    src(f"o = F.scaled_dot_product_attention({', '.join(args)})")  # [B, HQ, L, D]


def _attention_matmul(src: Source, style: Style) -> None:
    if style.layout == "seq_first":
        src("k, v = k.transpose(1, 2), v.transpose(1, 2)")
    src("q = q.transpose(1, 2)")
    if style.dims.HQ != style.dims.HKV:
        src(f"k = {_repeat('k', 1, style)}")
        src(f"v = {_repeat('v', 1, style)}")
    src("scores = q @ k.transpose(-1, -2)")
    _scaled_and_masked(src, style, grouped=False)
    dim = {"softmax_over_heads": 1, "softmax_over_queries": 2}.get(style.negative, -1)
    src(f"probs = {_softmax(src, style, 'scores', dim)}")
    if style.negative == "values_by_query":
        src("o = probs @ (v + q.sum(-2, keepdim=True))")
    else:
        src("o = probs @ v")  # [B, HQ, L, D]


def _attention_einsum(src: Source, style: Style) -> None:
    d = style.dims
    kv = "bhsd" if style.layout == "heads_first" else "bshd"
    dim = {"softmax_over_heads": 1, "softmax_over_queries": 2}.get(style.negative, -1)
    if style.sharing == "group_einsum":
        kv_g = kv.replace("h", "j")
        src(f"qg = q.view({d.B}, {d.L}, {d.HKV}, {d.HQ // d.HKV}, {d.D})")
        src(f"scores = torch.einsum('bljgd,{kv_g}->bjgls', qg, k)")
        _scaled_and_masked(src, style, grouped=True)
        dim = {"softmax_over_heads": 2, "softmax_over_queries": 3}.get(style.negative, -1)
        src(f"probs = {_softmax(src, style, 'scores', dim)}")
        src(f"o = torch.einsum('bjgls,{kv_g}->bjgld', probs, v).reshape({d.B}, {d.HQ}, {d.L}, {d.D})")
        return
    if d.HQ != d.HKV:
        axis = 1 if style.layout == "heads_first" else 2
        src(f"k = {_repeat('k', axis, style)}")
        src(f"v = {_repeat('v', axis, style)}")
    src(f"scores = torch.einsum('blhd,{kv}->bhls', q, k)")
    _scaled_and_masked(src, style, grouped=False)
    src(f"probs = {_softmax(src, style, 'scores', dim)}")
    if style.negative == "values_by_query":
        src(f"o = torch.einsum('bhls,{kv}->bhld', probs, v) + torch.einsum('bhls,blhd->bhld', probs, q)")
    else:
        src(f"o = torch.einsum('bhls,{kv}->bhld', probs, v)")


def _router(src: Source, style: Style) -> None:
    """Not attention: a mixture-of-experts router (softmax over expert logits, then a product)."""
    d = style.dims
    src("gates = F.softmax(torch.einsum('blw,ew->ble', x, w_gate), dim=-1)")
    src(f"o = torch.einsum('ble,ewv->blv', gates, experts).view({d.B}, {d.L}, {d.HQ}, {d.D}).transpose(1, 2)")


def build_source(style: Style) -> str:
    d = style.dims
    src = Source()
    _projections(src, style)
    returns = _cache_write(src, style)
    _mask_tensors(src, style)
    if style.negative == "router_einsum":
        _router(src, style)
    else:
        {"sdpa": _attention_sdpa, "matmul": _attention_matmul, "einsum": _attention_einsum}[style.kernel](src, style)
    if style.output == "einsum":
        src(f"out = torch.einsum('bhld,hdw->blw', o, w_o.view({d.HQ}, {d.D}, {d.W}))")
    else:
        src(f"out = F.linear(o.transpose(1, 2).reshape({d.B}, {d.L}, {d.HQ * d.D}), w_o)")
    results = ["out"] + ([returns] if returns else []) + (["probs"] if style.negative == "probs_returned" else [])
    src(f"return {', '.join(results)}")
    header = "def attend(x, k_cache, v_cache, positions, lengths, head_mask):"
    return "\n".join([header] + src.lines) + "\n"


# ---- cases --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    index: int
    style: Style
    source: str
    fn: object
    filename: str

    def inputs(self, generator: torch.Generator) -> tuple:
        d = self.style.dims
        capacity = d.S
        if self.style.layout == "heads_first":
            cache_shape = (d.B, d.HKV, capacity, d.D)
        else:
            cache_shape = (d.B, capacity, d.HKV, d.D)
        start = start_position(self.style)
        keys = key_count(self.style)
        positions = torch.arange(start, start + d.L)
        # Different lengths per sequence; each at least covers the first new token.
        lengths = torch.tensor([start + 1 + (b * 5) % max(1, keys - start) for b in range(d.B)])
        head_mask = torch.rand(d.B, d.HQ, d.L, keys, generator=generator) < 0.7
        head_mask[..., 0] = True
        return (torch.randn(d.B, d.L, d.W, generator=generator), torch.randn(cache_shape, generator=generator),
                torch.randn(cache_shape, generator=generator), positions, lengths, head_mask)

    @property
    def expected_kind(self) -> Optional[str]:
        return None if self.style.negative else self.style.dims.kind


def _weights(style: Style, generator: torch.Generator) -> dict:
    d = style.dims

    def rand(*shape):
        return torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])

    w_q, w_k, w_v = rand(d.HQ * d.D, d.W), rand(d.HKV * d.D, d.W), rand(d.HKV * d.D, d.W)
    w_qkv = torch.cat([w_q, w_k, w_v])
    return {
        "torch": torch, "F": F, "math": math,
        "w_q": w_q, "w_k": w_k, "w_v": w_v, "w_qkv": w_qkv, "w_qkv_t": w_qkv.t().contiguous(),
        "b_qkv": rand(w_qkv.shape[0]), "w_o": rand(d.W, d.HQ * d.D),
        "inv_freq": 1.0 / (10000 ** (torch.arange(0, d.D, 2).float() / d.D)),
        "q_norm": 1 + rand(d.D), "k_norm": 1 + rand(d.D),
        "w_gate": rand(4, d.W), "experts": rand(4, d.W, d.HQ * d.D),
        "temperature": torch.nn.Parameter(torch.tensor(d.D ** -0.5)),
        "head_scale": torch.nn.Parameter((0.5 + torch.rand(d.HQ, generator=generator)) * d.D ** -0.5),
    }


def make_case(index: int, style: Style) -> Case:
    source = build_source(style)
    filename = f"style_case_{index}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = _weights(style, torch.Generator().manual_seed(1000 + index))
    exec(compile(source, filename, "exec"), namespace)
    return Case(index, style, source, namespace["attend"], filename)


def corpus(positives: int = 312) -> list:
    styles = (sample_styles(positives) + negative_styles() + tensor_scale_styles() + head_mask_styles()
              + query_head_mask_styles())
    return [make_case(index, style) for index, style in enumerate(styles)]

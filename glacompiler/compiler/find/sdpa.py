"""Scaled-dot-product-attention calls as they appear in ATen graphs after AOT.

F.scaled_dot_product_attention is decomposed during tracing into the backend-specific op that the
dispatcher would pick for the example inputs (CPU: flash_for_cpu or the math decomposition, which
softmax.py handles; CUDA: flash / efficient / cudnn). Arguments are read by schema name, so positional and
keyword spellings are the same to us.

| op                                              | mask argument | outputs besides `output` that must be unused |
|-------------------------------------------------|---------------|----------------------------------------------|
| aten.scaled_dot_product_attention               | attn_mask     | (single output)                              |
| aten._scaled_dot_product_flash_attention_for_cpu| attn_mask     | logsumexp                                    |
| aten._scaled_dot_product_flash_attention        | (none)        | logsumexp, cum_seq_*, rng state, debug mask  |
| aten._scaled_dot_product_efficient_attention    | attn_bias     | log_sumexp, philox seed/offset               |
| aten._scaled_dot_product_cudnn_attention        | attn_bias     | logsumexp, cum_seq_*, philox, debug mask     |
| aten._scaled_dot_product_fused_attention_overrideable | attn_bias | logsumexp, ...                             |
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from ..decline import UNEXPECTED_GRAPH, Decline

aten = torch.ops.aten


@dataclasses.dataclass(frozen=True)
class SdpaVariant:
    mask_arg: Optional[str]
    single_output: bool


def _variants() -> dict:
    table = {
        "scaled_dot_product_attention": SdpaVariant("attn_mask", True),
        "_scaled_dot_product_flash_attention_for_cpu": SdpaVariant("attn_mask", False),
        "_scaled_dot_product_flash_attention": SdpaVariant(None, False),
        "_scaled_dot_product_efficient_attention": SdpaVariant("attn_bias", False),
        "_scaled_dot_product_cudnn_attention": SdpaVariant("attn_bias", False),
        "_scaled_dot_product_fused_attention_overrideable": SdpaVariant("attn_bias", False),
    }
    # Only the overloads this torch build has (older builds lack some of them).
    return {getattr(aten, name).default: variant for name, variant in table.items() if hasattr(aten, name)}


SDPA_VARIANTS = _variants()


@dataclasses.dataclass
class SdpaCall:
    node: fx.Node
    output: fx.Node  # the node holding the attention output
    query: fx.Node
    key: fx.Node
    value: fx.Node
    mask: Optional[fx.Node]
    is_causal: bool
    scale: Optional[float]
    enable_gqa: bool
    form: str


def is_sdpa(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in SDPA_VARIANTS


def read_sdpa(node: fx.Node) -> SdpaCall:
    variant = SDPA_VARIANTS[node.target]
    normalized = normalize_function(node.target, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True)
    if normalized is None:
        raise Decline(f"cannot read the arguments of {node.target}", fix=UNEXPECTED_GRAPH, node=node)
    kwargs = normalized.kwargs
    form = f"sdpa:{node.target.__name__.split('.')[0]}"
    if variant.single_output:
        output = node
    else:
        users = list(node.users)
        if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
            raise Decline(f"{form} results are used whole", fix=UNEXPECTED_GRAPH)
        if any(u.args[1] != 0 for u in users):
            raise Decline(f"{form} also has its logsumexp or other side outputs used",
                          fix="use only the attention output (the op can return lse, but the pass does not yet)")
        if len(users) != 1:
            raise Decline(f"{form} output is read by {len(users)} getitem nodes", fix=UNEXPECTED_GRAPH)
        output = users[0]
    dropout = kwargs.get("dropout_p", 0.0)
    if dropout:
        raise Decline(f"dropout_p={dropout} is active", fix="dropout_p=0 at inference (model.eval())")
    scale = kwargs.get("scale")
    if scale is not None and not isinstance(scale, (int, float)):
        raise Decline("the softmax scale is not a constant", fix="a Python number as SDPA's scale")
    mask = kwargs.get(variant.mask_arg) if variant.mask_arg else None
    if mask is not None and not isinstance(mask, fx.Node):
        raise Decline("the attention mask is not a tensor", fix=UNEXPECTED_GRAPH)
    return SdpaCall(
        node=node,
        output=output,
        query=kwargs["query"],
        key=kwargs["key"],
        value=kwargs["value"],
        mask=mask,
        is_causal=bool(kwargs.get("is_causal", False)),
        scale=None if scale is None else float(scale),
        enable_gqa=bool(kwargs.get("enable_gqa", False)),
        form=form,
    )

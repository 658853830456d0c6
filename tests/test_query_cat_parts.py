"""A query concatenated from its rope-free and rope parts (q = cat(q_nope, rope(q_pe)), scored against
cat(k_nope, k_rope)) reaches the op as those parts, read where they are made (plan/site_plan.py cat_part): the
cat is left unused, so Inductor does not make it. Parts whose rows the Hopper latent kernel could not take in place
(starts or strides not 16-element aligned) and parts of another dtype than the cat keep the cat."""
import math

import pytest
import torch

from test_backend_support import assert_close, run_pass

B, HQ, HKV, S = 2, 8, 2, 24
GROUP = HQ // HKV
VIEWS = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default,
         torch.ops.aten.slice.Tensor, torch.ops.aten.permute.default, torch.ops.aten.transpose.int,
         torch.ops.aten.unsqueeze.default, torch.ops.aten.squeeze.dims, torch.ops.aten.expand.default,
         torch.ops.aten.clone.default}


def rotate(x, positions):
    """Rotate-half RoPE over the last dim (a computation of its own: its output is not a view)."""
    half = x.shape[-1] // 2
    angles = positions[:, None, None, None].float() * 0.1 ** torch.arange(half, dtype=torch.float32)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin()], dim=-1)


def attend(q, tied, rope_key, valid):
    """GTA attention of q [B, 1, HQ, nope + rope]: K = cat(tied nope columns, the shared rope key), V = tied."""
    nope, rope = q.shape[-1] - rope_key.shape[-1], rope_key.shape[-1]
    k = torch.cat([tied[..., :nope], rope_key[:, :, None, :].expand(B, S, HKV, rope)], dim=-1)
    keys = k.transpose(1, 2).repeat_interleave(GROUP, dim=1)
    scores = q.transpose(1, 2) @ keys.transpose(-1, -2) / math.sqrt(nope + rope)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ tied.transpose(1, 2).repeat_interleave(GROUP, dim=1)).transpose(1, 2)


def gta_step(nope: int, rope: int, skip: int = 0):
    """GTA decode as a model writes it: one projection for every query head's [nope | rope] columns (after `skip`
    columns it does not use), the query concatenated back after RoPE, K = cat(tied nope columns, the shared rope
    key)."""
    def step(hidden, weight, tied, rope_key, positions, valid):
        projected = (hidden @ weight).view(B, 1, HQ, skip + nope + rope)
        q_nope, q_pe = projected[..., skip:skip + nope], projected[..., skip + nope:]
        q = torch.cat([q_nope, rotate(q_pe, positions).to(hidden.dtype)], dim=-1)
        return attend(q, tied, rope_key, valid)
    return step


def inputs(nope: int, rope: int, skip: int = 0, dtype=torch.float32):
    torch.manual_seed(0)
    hidden = torch.randn(B, 1, 32, dtype=dtype)
    weight = torch.randn(32, HQ * (skip + nope + rope), dtype=dtype) / 6
    tied = torch.randn(B, S, HKV, nope + rope, dtype=dtype)
    valid = torch.arange(S)[None, :] < torch.tensor([5, S])[:, None]
    return hidden, weight, tied, torch.randn(B, S, rope, dtype=dtype), torch.tensor([4, S - 1]), valid


def query_sources(result) -> list:
    """Per op call, the nodes its q and q_rope (where it has one) are views of."""
    sources = []
    for call in result.op_calls():
        for argument in (call.args[0], call.args[3]):
            while argument is not None and argument.op == "call_function" and argument.target in VIEWS:
                argument = argument.args[0]
            sources.append(argument)
    return sources


def is_query_cat(node, width: int) -> bool:
    """The model's q = cat([q_nope, rope(q_pe)]): [B, 1, HQ, width] (RoPE's own cat of its halves is narrower)."""
    return (node is not None and node.target is torch.ops.aten.cat.default
            and tuple(node.meta["val"].shape) == (B, 1, HQ, width))


@pytest.mark.parametrize("nope, rope, skip", [(16, 16, 0), (32, 16, 0), (16, 16, 32)])
def test_aligned_parts_reach_the_op_and_the_cat_is_unused(nope, rope, skip):
    step, args = gta_step(nope, rope, skip), inputs(nope, rope, skip)
    result = run_pass(step, *args)
    assert result.statuses == ["rewritten"], result.reasons
    assert result.records[0].kind == "gta"
    assert not any(is_query_cat(source, nope + rope) for source in query_sources(result))
    assert not any(is_query_cat(node, nope + rope) and node.users for node in result.graph.nodes)
    assert_close(result.output, step(*args))


@pytest.mark.parametrize("nope, rope, skip", [(24, 16, 0), (24, 16, 8)])
def test_parts_off_16_element_alignment_keep_the_cat(nope, rope, skip):
    """24 + 16: q_nope's heads 40 elements apart; 8 skipped + 24 + 16: heads 48 apart, but q_nope starts 8 elements
    into the projection's rows."""
    step, args = gta_step(nope, rope, skip), inputs(nope, rope, skip)
    result = run_pass(step, *args)
    assert result.statuses == ["rewritten"], result.reasons
    assert result.records[0].kind == "gta"
    assert any(is_query_cat(source, nope + rope) for source in query_sources(result))
    assert_close(result.output, step(*args))


def test_a_part_of_another_dtype_keeps_the_cat():
    """cat promotes: q_nope in fp16 beside an fp32 rope part is not the query the op reads (read as one, the site
    would decline the tied form for the dtypes and read K as a cache of its own)."""
    nope, rope = 16, 16

    def step(hidden, weight, tied, rope_key, positions, valid):
        projected = (hidden @ weight).view(B, 1, HQ, nope + rope)
        q = torch.cat([projected[..., :nope].half(), rotate(projected[..., nope:], positions)], dim=-1)
        return attend(q, tied, rope_key, valid)

    args = inputs(nope, rope)
    result = run_pass(step, *args)
    assert result.statuses == ["rewritten"], result.reasons
    assert result.records[0].kind == "gta"
    assert any(is_query_cat(source, nope + rope) for source in query_sources(result))
    assert_close(result.output, step(*args), tol=2e-3)


def test_a_part_broadcast_over_heads_keeps_the_cat():
    """A rope part shared by every head (expanded: stride 0 along heads) is not a query the op reads in place."""
    nope, rope = 16, 16

    def step(hidden, weight, tied, rope_key, positions, valid):
        q_nope = (hidden @ weight).view(B, 1, HQ, nope + rope)[..., :nope]
        shared = rotate(hidden[..., :rope].view(B, 1, 1, rope), positions).expand(B, 1, HQ, rope)
        q = torch.cat([q_nope, shared], dim=-1)
        return attend(q, tied, rope_key, valid)

    args = inputs(nope, rope)
    result = run_pass(step, *args)
    assert result.statuses == ["rewritten"], result.reasons
    for call in result.op_calls():  # q and q_rope: views of the cat, not of the expanded part
        for argument in (call.args[0], call.args[3]):
            while argument.op == "call_function" and argument.target in VIEWS:
                assert argument.target is not torch.ops.aten.expand.default
                argument = argument.args[0]
    assert_close(result.output, step(*args))

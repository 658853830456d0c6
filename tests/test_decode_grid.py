"""benchmarks/decode_grid.py hands the same problem to FlashAttention-3 and SDPA as to our op: each adaptor must
compute the same attention. FA3 is not installed on the CPU machines, so a float64 stand-in written from
flash_attn_with_kvcache's documented contract (scores q.k + qv.v_cache, paged keys through page_table, causal from
the bottom right) checks the argument mapping of every kind; SDPA runs as it is."""
import importlib
import math
import pathlib
import sys
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import decode_grid  # noqa: E402
from ab_decode import make_inputs  # noqa: E402

import glacompiler  # noqa: E402


def fa3_stand_in(q, k_cache, v_cache, qv=None, cache_seqlens=None, page_table=None, softmax_scale=None,
                 causal=False):
    """flash_attn_with_kvcache's math, in float64: q [B, Lq, Hq, D], k_cache [P, page, Hkv, D] (no page_table:
    [B, S, Hkv, D]), v_cache likewise with Dv, qv [B, Lq, Hq, Dv] (scores gain qv . v)."""
    batch, query_len, heads, _ = q.shape
    kv_heads = k_cache.shape[2]
    out = torch.empty(batch, query_len, heads, v_cache.shape[-1], dtype=torch.float64)
    for b in range(batch):
        length = int(cache_seqlens[b])
        if page_table is None:
            keys, values = k_cache[b, :length].double(), v_cache[b, :length].double()  # [S, Hkv, D]
        else:
            keys = k_cache[page_table[b].long()].flatten(0, 1)[:length].double()
            values = v_cache[page_table[b].long()].flatten(0, 1)[:length].double()
        for h in range(heads):
            kv = h // (heads // kv_heads)
            scores = q[b, :, h].double() @ keys[:, kv].T
            if qv is not None:
                scores = scores + qv[b, :, h].double() @ values[:, kv].T
            scores = scores * softmax_scale
            if causal:
                last = length - query_len + torch.arange(query_len)
                scores = scores.masked_fill(torch.arange(length)[None, :] > last[:, None], -math.inf)
            out[b, :, h] = torch.softmax(scores, dim=-1) @ values[:, kv]
    return out


@pytest.mark.parametrize("page_size", [16, 0])  # 0: contiguous caches (bench_decode.py --grid --page-size 0)
@pytest.mark.parametrize("name", ["mla", "gla2", "gta", "gqa"])
def test_fa3_adaptor_computes_our_attention(name, page_size):
    kwargs = make_inputs(name, 2, 48, 2, page_size, seed=3, device="cpu", dtype=torch.float32)
    assert (kwargs["page_table"] is None) == (page_size == 0)
    lengths = torch.tensor([48, 29], dtype=torch.int32)
    kwargs["cache_seqlens"] = lengths
    spec_width = kwargs["q"].shape[-1] + (kwargs["q_rope"].shape[-1] if "q_rope" in kwargs else 0)
    scale = spec_width ** -0.5
    ours = glacompiler.attention_with_kvcache(**kwargs, softmax_scale=scale, causal=True)
    theirs = decode_grid.fa3_call(fa3_stand_in, name, kwargs, scale)()
    torch.testing.assert_close(theirs, ours.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("page_size", [16, 0])
@pytest.mark.parametrize("query_len", [1, 3])
def test_sdpa_baseline_computes_our_attention(query_len, page_size):
    kwargs = make_inputs("gqa", 2, 48, query_len, page_size, seed=4, device="cpu", dtype=torch.float32)
    scale = kwargs["q"].shape[-1] ** -0.5
    ours = glacompiler.attention_with_kvcache(**kwargs, softmax_scale=scale, causal=True)
    torch.testing.assert_close(decode_grid.sdpa_call(kwargs, scale)(), ours, rtol=1e-5, atol=1e-5)


def test_grid_rows_are_the_issues_and_their_neighbours():
    assert decode_grid.grid_rows(False) == decode_grid.ISSUE_ROWS
    rows = decode_grid.grid_rows(True)
    assert len(rows) == 12 and set(decode_grid.ISSUE_ROWS) <= set(rows)
    assert {q for _, _, q in rows} == {1, 2, 4}


def test_grid_shapes_keep_those_rows_only():
    assert decode_grid.grid_rows(True, "1x65536,32x4096") == [(32, 4096, 1), (32, 4096, 2), (32, 4096, 4),
                                                              (1, 65536, 1), (1, 65536, 2), (1, 65536, 4)]
    assert decode_grid.grid_rows(False, "8x32768") == [(8, 32768, 1)]
    listed = r"not in the grid \(its BxS: 128x8192, 8x32768, 32x4096, 1x65536\)"
    for bad in ("2x4096", "1X65536", "1x65536,"):
        with pytest.raises(ValueError, match=r"shapes: .* " + listed):
            decode_grid.grid_rows(True, bad)


def test_a_baseline_that_computes_something_else_is_refused():
    ours = torch.randn(2, 1, 4, 8)
    assert decode_grid.check_agreement(ours + 1e-3, ours, "FA3") == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(RuntimeError, match="FA3 and our op disagree"):
        decode_grid.check_agreement(ours.flip(-1), ours, "FA3")


def test_ab_rows_replace_the_cases():
    """ab_decode.py's --rows list (case:batch:cache:Lq) replaces the cases x query lengths at one batch and cache."""
    from ab_decode import worker_rows

    args = SimpleNamespace(rows="mla:8:32768:1,gqa:1:65536:4", cases="mla,gla2", q_lens="1,2", batch=128, seqlen=8192)
    assert worker_rows(args) == [("mla", 8, 32768, 1), ("gqa", 1, 65536, 4)]
    args.rows = ""
    assert worker_rows(args) == [("mla", 128, 8192, 1), ("mla", 128, 8192, 2), ("gla2", 128, 8192, 1),
                                 ("gla2", 128, 8192, 2)]


def test_ab_refuses_rows_it_cannot_build_and_trees_it_did_not_load():
    import argparse

    from ab_decode import check_row_arguments, loaded_from

    parser = argparse.ArgumentParser()
    for rows, combine in (("mla:8:1000:1", ""), ("foo:8:1024:1", ""), ("mla:8:1024", ""), ("mla:8:1024:1", "1:2")):
        args = SimpleNamespace(rows=rows, combine=combine, page_size=64, cases="", q_lens="", batch=1, seqlen=64)
        with pytest.raises(SystemExit):
            check_row_arguments(parser, args)
    tree = pathlib.Path("/trees/new")
    assert loaded_from(tree, {"glacompiler": "/trees/new/glacompiler/__init__.py", "templates": "/trees/new/templates"})
    assert not loaded_from(tree, {"glacompiler": "/trees/new/glacompiler/__init__.py", "templates": "/work/templates"})


@pytest.mark.parametrize("argv,message", [
    (["--neighbours"], "--neighbours: for --grid only"),
    (["--rounds", "3"], "--rounds: for --grid only"),  # given at its default value: still given
    (["--shapes", "1x65536", "--rounds", "5"], "--rounds, --shapes: for --grid only"),
    (["--grid", "--batch", "8", "--skip-baselines"], "--batch, --skip-baselines: not for --grid"),
])
def test_bench_decode_refuses_a_flag_of_the_other_mode(argv, message, capsys):
    """A flag the chosen mode would ignore is an error (--neighbours without --grid once ran the per-case table)."""
    import bench_decode

    with pytest.raises(SystemExit) as exited:
        bench_decode.parse_arguments(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err
    args = bench_decode.parse_arguments(["--grid", "--neighbours", "--kinds", "gta", "--page-size", "0"])
    assert (args.grid, args.neighbours, args.kinds, args.page_size, args.rounds) == (True, True, "gta", 0, 3)
    assert (args.batch, args.cases, args.skip_baselines, args.shapes) == (128, "mla,gla2,gta,gqa", False, "")
    args = bench_decode.parse_arguments(["--batch", "8", "--json", "out.json"])
    assert (args.grid, args.batch, args.json, args.kinds, args.neighbours) == (
        False, 8, "out.json", "mla,gla2,gla8,gta,gqa", False)


def test_rotating_rounds_time_every_contender_each_round_none_always_first(monkeypatch):
    order = []
    monkeypatch.setattr(decode_grid, "graph_us", lambda call: order.append(call()) or float(len(order)))
    times = decode_grid.rotating_rounds({"a": lambda: "a", "b": lambda: "b", "c": lambda: "c"}, 3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}


def _check_read_folds_every_word(device: str):
    import stream_read

    # triton.jit picks interpreted or compiled when the kernel is defined: define it again under this test's mode.
    stream_read = importlib.reload(stream_read)
    generator = torch.Generator().manual_seed(7)
    words = torch.randint(-2**31, 2**31 - 1, (3 * 4096 + 12,), dtype=torch.int32, generator=generator)
    expected = 0
    for word in words.tolist():
        expected ^= word
    words = words.to(device)
    for shape in stream_read.LAUNCH_SHAPES:
        folded = torch.zeros(64, dtype=torch.int32, device=device)
        stream_read.read_launcher(words, folded, *shape, multiprocessors=2)()
        got = 0
        for word in folded.cpu().tolist():  # programs past the grid leave their zeros, which xor keeps
            got ^= word
        assert got == expected, shape


def test_stream_read_folds_every_word_once(interpret_kernels):
    """The grid's size-matched read ceiling reads each word of its buffer exactly once at every launch shape (a
    word read twice or skipped changes the xor), a size that no shape divides evenly included."""
    _check_read_folds_every_word("cpu")


@pytest.mark.gpu
def test_stream_read_folds_every_word_once_on_the_gpu():
    _check_read_folds_every_word("cuda")

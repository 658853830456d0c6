"""Prepared op calls (glacompiler/op/prepared.py): a repeat with the same metadata skips validation and the
kernel choice and runs the plan of the first call. CPU, kernels under the interpreter where they must run;
fp16/fp32 (the interpreter's bf16 tl.dot is wrong)."""
import pytest
import torch

import glacompiler
from glacompiler.memo import BoundedMemo
from glacompiler.op import dispatch, prepared
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import default_softmax_scale

from kernel_cases import CPU_SPECS

OP_ARGS = ("q", "k_cache", "v_cache", "q_rope", "k_rope_cache", "cache_seqlens", "page_table", "attn_mask")


@pytest.fixture
def fresh_memos(monkeypatch):
    """Empty memos for the test (and the counts of validations the prepared path makes)."""
    monkeypatch.setattr(prepared, "_prepared", BoundedMemo(1024))
    monkeypatch.setattr(prepared, "wrapper_calls", BoundedMemo(1024))
    validations = []
    real_validate = dispatch.validate_inputs

    def counting_validate(*args, **kwargs):
        validations.append(args)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(dispatch, "validate_inputs", counting_validate)
    return validations


def _problem(name, dtype, seed, **kwargs):
    return make_decode_problem(CPU_SPECS[name], batch=3, query_len=2, capacity=40, dtype=dtype,
                               generator=torch.Generator().manual_seed(seed), **kwargs)


def _default_scale(kwargs):
    q_rope = kwargs.get("q_rope")
    return default_softmax_scale(kwargs["q"].shape[-1], 0 if q_rope is None else q_rope.shape[-1])


def _run_op(kwargs, softmax_scale=None, causal=True, num_splits=0, **extra):
    """The op as the CUDA dispatcher runs it (run_prepared), with the schema's argument types; the problems'
    default scale unless given."""
    args = [kwargs.get(name) for name in OP_ARGS]
    scale = _default_scale(kwargs) if softmax_scale is None else softmax_scale
    return prepared.run_prepared(*args, scale, causal, num_splits, **extra)


@pytest.mark.parametrize("name, dtype, mask", [("gqa", torch.float32, None), ("gla2", torch.float16, "bool"),
                                               ("gta", torch.float32, "additive")])
def test_repeats_run_the_first_calls_plan_and_are_right(interpret_kernels, fresh_memos, name, dtype, mask):
    # Fixed lengths: a paged problem's page pool follows them (and the pool's shape is metadata).
    paging = dict(mask=mask, page_size=16 if name == "gla2" else 0, seqlens=[5, 33, 40])
    first = _problem(name, dtype, 1, **paging)
    out_first, lse_first = _run_op(first.kwargs, num_splits=2)
    assert len(fresh_memos) == 1 and len(prepared._prepared) == 1
    check_fa_rule(out_first, lse_first, first)
    # Fresh data of the same metadata (paged: the same page table shape): the plan is reused, results right.
    again = _problem(name, dtype, 2, **paging)
    assert prepared.call_key(*[again.kwargs.get(n) for n in OP_ARGS], _default_scale(again.kwargs), True, 2, None,
                             0.0, None, None, -1, -1) in prepared._prepared
    out, lse = _run_op(again.kwargs, num_splits=2)
    assert len(fresh_memos) == 1 and len(prepared._prepared) == 1  # no second validation, no second plan
    check_fa_rule(out, lse, again)
    # The first data again: exactly the first call's results (the same kernel with the same arguments).
    out_repeat, lse_repeat = _run_op(first.kwargs, num_splits=2)
    torch.testing.assert_close(out_repeat, out_first, rtol=0, atol=0)
    torch.testing.assert_close(lse_repeat, lse_first, rtol=0, atol=0)


def test_the_wrapper_validates_once_per_metadata(interpret_kernels, fresh_memos, monkeypatch):
    validated = []
    real_validate = glacompiler.op.validate_inputs
    monkeypatch.setattr(glacompiler.op, "validate_inputs",
                        lambda *a, **kw: validated.append(a) or real_validate(*a, **kw))
    problem = _problem("gqa", torch.float16, 3)
    for _ in range(3):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
        check_fa_rule(out, lse, problem)
    assert len(validated) == 1 and len(prepared.wrapper_calls) == 1
    glacompiler.attention_with_kvcache(**problem.kwargs, softcap=2.0)  # a new scalar: validated again
    assert len(validated) == 2


def test_the_wrappers_direct_repeats_look_up_one_key(interpret_kernels, fresh_memos, monkeypatch, debug_checks):
    """The wrapper's path that skips the dispatcher (CUDA, no autograd: taken here on the interpreter): a repeat
    runs the PreparedCall its own key holds, with no op key computed, until the prepared calls are cleared."""
    monkeypatch.setattr(glacompiler.op, "_runs_directly", lambda q: True)
    keys = []
    real_call_key = prepared.call_key
    monkeypatch.setattr(prepared, "call_key", lambda *args: keys.append(args) or real_call_key(*args))
    problems = [_problem("gqa", torch.float16, seed, mask="bool") for seed in (10, 11)]
    with torch.no_grad():
        for problem in problems + problems:
            out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
            check_fa_rule(out, lse, problem)
        assert len(keys) == 1 and len(fresh_memos) == 1 and len(prepared._prepared) == 1
        (validated,) = prepared.wrapper_calls.values()
        assert validated.prepared is next(iter(prepared._prepared.values()))
        prepared.clear_prepared_calls()  # (the tables changed): the wrapper's calls are planned again
        glacompiler.attention_with_kvcache(**problems[0].kwargs)
        assert len(keys) == 2 and len(fresh_memos) == 2
        debug_checks(True)
        too_long = _changed(problems[0].kwargs, "cache_seqlens", torch.full((3,), 41, dtype=torch.int32))
        with pytest.raises(ValueError, match="cache_seqlens must lie in"):  # a repeat's value checks
            glacompiler.attention_with_kvcache(**too_long)
    assert len(keys) == 2


@pytest.mark.parametrize("direct", [False, True])
def test_the_wrapper_takes_a_steps_key_range(interpret_kernels, fresh_memos, monkeypatch, direct):
    """kv_range made once by glacompiler.mask_key_range for calls sharing a mask (FlashInfer's plan step): the same
    results as each call reducing the range itself, and no range launch per call. Sequence 0's mask has a hole
    (the sparse pass), sequence 1's is dense; through the dispatcher or the wrapper's direct path."""
    from glacompiler.kernels.common.mask_range import MaskKeyRangeLaunch

    if direct:
        monkeypatch.setattr(glacompiler.op, "_runs_directly", lambda q: True)
    reductions = []
    real_reduce = MaskKeyRangeLaunch.__call__
    monkeypatch.setattr(MaskKeyRangeLaunch, "__call__", lambda self, mask: reductions.append(1) or
                        real_reduce(self, mask))
    problem = _problem("gqa", torch.float16, 12, mask="bool", mask_rows="key", seqlens=[30, 40, 17])
    kw = problem.kwargs
    kw["attn_mask"].copy_((torch.arange(40) < torch.tensor([30, 40, 17])[:, None])[:, None, None, :])
    kw["attn_mask"][0, ..., 5] = False
    kv_range = glacompiler.mask_key_range(kw["attn_mask"], 3, 40)
    assert kv_range.tolist()[2] == [0, 1, 1]
    reductions.clear()
    with torch.no_grad():
        out, lse = glacompiler.attention_with_kvcache(**kw, return_lse=True)
        assert len(reductions) == 1  # (each call reduces its range)
        for _ in range(2):
            out_given, lse_given = glacompiler.attention_with_kvcache(**kw, kv_range=kv_range, return_lse=True)
    assert len(reductions) == 1
    check_fa_rule(out_given, lse_given, problem)
    torch.testing.assert_close(out_given, out, rtol=0, atol=0)
    torch.testing.assert_close(lse_given, lse, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gqa", "gla2"])
def test_the_wrapper_takes_a_steps_key_range_on_gpu(cuda_device, fresh_memos, name):
    """bf16 on the GPU (portable GQA, Hopper GLA-2 where the GPU has it), a hole in one sequence's mask: a step's
    key range given gives the results of ranges reduced per call, through the wrapper's direct path."""
    seqlens = [300, 170, 299, 64]
    problem = make_decode_problem(CPU_SPECS[name], batch=4, query_len=1, capacity=300, dtype=torch.bfloat16,
                                  device=cuda_device, mask="bool", mask_rows="key", seqlens=seqlens,
                                  generator=torch.Generator().manual_seed(14))
    kw = problem.kwargs
    kw["attn_mask"].copy_((torch.arange(300, device=cuda_device) < torch.tensor(seqlens, device=cuda_device)[:, None])
                          .view(4, 1, 1, 300))
    kw["attn_mask"][1, ..., 37] = False
    kv_range = glacompiler.mask_key_range(kw["attn_mask"], 4, 300)
    with torch.no_grad():
        reduced = glacompiler.attention_with_kvcache(**kw, return_lse=True)
        given = glacompiler.attention_with_kvcache(**kw, kv_range=kv_range, return_lse=True)
    check_fa_rule(*given, problem)
    for ours, theirs in zip(given, reduced):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_key_range_of_another_shape_or_without_its_mask_is_refused(fresh_memos):
    kw = _problem("gqa", torch.float32, 13, mask="bool", mask_rows="key").kwargs
    kv_range = glacompiler.mask_key_range(kw["attn_mask"], 3, 40)
    with pytest.raises(ValueError, match=r"kv_range must be a contiguous int32 \[3, 3\]"):
        glacompiler.attention_with_kvcache(**kw, kv_range=kv_range[:, :2])
    with pytest.raises(ValueError, match="kv_range is the key range of attn_mask: it needs attn_mask"):
        glacompiler.attention_with_kvcache(**{**kw, "attn_mask": None}, kv_range=kv_range)
    with pytest.raises(ValueError, match="B = 2, S = 40"):
        glacompiler.mask_key_range(kw["attn_mask"], 2, 40)
    with pytest.raises(ValueError, match="B = 3, S = 41"):
        glacompiler.mask_key_range(kw["attn_mask"], 3, 41)
    with pytest.raises(ValueError, match="batch must be an int"):
        glacompiler.mask_key_range(kw["attn_mask"], 3.0, 40)
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        glacompiler.mask_key_range(kw["attn_mask"].int(), 3, 40)


def _key(kwargs, softmax_scale=0.2, causal=True, num_splits=0, kv_range=None, softcap=0.0, alibi_slopes=None,
         sinks=None, window_size=(-1, -1)):
    return prepared.call_key(*[kwargs.get(name) for name in OP_ARGS], softmax_scale, causal, num_splits, kv_range,
                             softcap, alibi_slopes, sinks, *window_size)


def _changed(kwargs, name, value):
    return {**kwargs, name: value}


def test_every_piece_of_metadata_makes_a_new_key():
    kw = _problem("gqa", torch.float32, 4, mask="bool").kwargs
    q, k_cache = kw["q"], kw["k_cache"]
    base = _key(kw)
    assert _key(dict(kw)) == base  # other tensor objects with the same metadata: the same key
    unaligned_q = torch.empty(q.numel() + 1, dtype=q.dtype)[1:].view(q.shape)  # 4 bytes past a 16-byte boundary
    variants = {
        "shape": _key(_changed(kw, "q", q[:, :1])),
        "strides": _key(_changed(kw, "k_cache", k_cache.transpose(0, 1).contiguous().transpose(0, 1))),
        "dtype": _key(_changed(kw, "q", q.half())),
        "alignment": _key(_changed(kw, "q", unaligned_q)),
        "mask dtype": _key(_changed(kw, "attn_mask", kw["attn_mask"].float())),
        "no lengths": _key(_changed(kw, "cache_seqlens", None)),
        "softmax_scale": _key(kw, softmax_scale=0.3),
        "causal": _key(kw, causal=False),
        "num_splits": _key(kw, num_splits=2),
        "kv_range": _key(kw, kv_range=torch.zeros(3, 3, dtype=torch.int32)),
        "softcap": _key(kw, softcap=5.0),
        "alibi_slopes": _key(kw, alibi_slopes=torch.rand(8)),
        "sinks": _key(kw, sinks=torch.rand(8)),
        "window_size": _key(kw, window_size=(4, 0)),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)


def test_a_new_shape_or_scalar_makes_a_new_plan(interpret_kernels, fresh_memos):
    problem = _problem("gqa", torch.float32, 5)
    _run_op(problem.kwargs)
    _run_op(problem.kwargs, softmax_scale=0.3)
    sliced = {name: (value[:2] if value is not None else None) for name, value in problem.kwargs.items()
              if name in OP_ARGS}
    out, _ = _run_op(sliced)
    assert len(fresh_memos) == 3 and len(prepared._prepared) == 3
    assert out.shape[0] == 2


# A bad argument after a good one with the same metadata cannot exist: validation reads only what the key holds
# (shapes, strides, dtypes, devices, alignment, scalars; the value checks run on every call where they run at
# all). So the bad calls below all have new keys, and the first-call path raises the argument's error.
@pytest.mark.parametrize("change, error, message", [
    (lambda kw: _changed(kw, "k_cache", kw["k_cache"].half()), TypeError, "k_cache has dtype"),
    (lambda kw: _changed(kw, "cache_seqlens", kw["cache_seqlens"].long()), TypeError, "cache_seqlens must be int32"),
    (lambda kw: _changed(kw, "q", kw["q"][..., :-8]), ValueError, "q head dim"),
    (lambda kw: _changed(kw, "attn_mask", torch.ones(3, 1, 1, 7, dtype=torch.bool)), ValueError, "attn_mask shape"),
    (lambda kw: _changed(kw, "k_cache", kw["k_cache"].transpose(2, 3)), ValueError, "k_cache must be contiguous"),
])
def test_bad_arguments_after_good_ones_raise(interpret_kernels, fresh_memos, change, error, message):
    kw = _problem("gqa", torch.float32, 6).kwargs
    _run_op(kw)
    with pytest.raises(error, match=message):
        _run_op(change(kw))
    assert len(prepared._prepared) == 1


def test_bad_scalar_types_after_good_ones_raise_in_the_wrapper(fresh_memos):
    kw = _problem("gqa", torch.float32, 7).kwargs
    glacompiler.attention_with_kvcache(**kw, softcap=1.0, window_size=(1, 0))
    with pytest.raises(TypeError, match="softcap must be a float"):
        glacompiler.attention_with_kvcache(**kw, softcap=True, window_size=(1, 0))  # True == 1.0, yet refused
    with pytest.raises(TypeError, match="window_size must be a pair of ints"):
        glacompiler.attention_with_kvcache(**kw, softcap=1.0, window_size=(True, 0))
    with pytest.raises(TypeError, match="window_size must be a pair of ints"):
        glacompiler.attention_with_kvcache(**kw, softcap=1.0, window_size=5)
    with pytest.raises(TypeError, match="softmax_scale must be a float"):
        glacompiler.attention_with_kvcache(**kw, softmax_scale=[0.2])  # unhashable: no key, validated


def test_value_checks_run_on_repeats_under_debug(interpret_kernels, fresh_memos, debug_checks):
    kw = _problem("gqa", torch.float32, 8).kwargs
    _run_op(kw)
    debug_checks(True)
    too_long = _changed(kw, "cache_seqlens", torch.full_like(kw["cache_seqlens"], 41))  # capacity 40
    with pytest.raises(ValueError, match="cache_seqlens must lie in"):
        _run_op(too_long)
    assert len(fresh_memos) == 1  # the repeat was prepared: its value checks ran without a new validation


def test_the_memos_are_bounded(interpret_kernels, fresh_memos, monkeypatch):
    monkeypatch.setattr(prepared._prepared, "limit", 2)
    monkeypatch.setattr(prepared.wrapper_calls, "limit", 2)
    problem = _problem("mqa", torch.float32, 9)
    for scale in (0.1, 0.2, 0.3, 0.4):
        _run_op(problem.kwargs, softmax_scale=scale)
        glacompiler.attention_with_kvcache(**problem.kwargs, softmax_scale=scale)
        assert len(prepared._prepared) <= 2 and len(prepared.wrapper_calls) <= 2
    assert len(fresh_memos) == 4


def test_calls_with_an_explicit_config_reuse_their_plan(interpret_kernels, monkeypatch):
    """attention_with_kvcache_config (the tuner's and benchmarks' path) plans once per (metadata, config): a graph
    captured from a repeat runs the plan an eager call made (a fused combine's counts are made outside the capture)."""
    from glacompiler.kernels.portable import PortableConfig

    monkeypatch.setattr(prepared, "_prepared_with_config", BoundedMemo(16))
    problem = _problem("gqa", torch.float32, 5)
    fused = PortableConfig(block_m=16, block_n=16, block_d=32, num_splits=3, fused_combine=True)
    for _ in range(2):
        out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=fused)
        check_fa_rule(out, lse, problem)
    calls = list(prepared._prepared_with_config.values())
    assert len(calls) == 1 and calls[0].plan.fused and calls[0].plan.split_counts is not None
    glacompiler.attention_with_kvcache_config(**problem.kwargs, config=PortableConfig(num_splits=3))
    assert len(prepared._prepared_with_config.values()) == 2


def test_lengths_of_the_capacity_are_made_once():
    from glacompiler.kernels.common.key_bounds import capacity_lengths

    lengths = capacity_lengths(5, 33, torch.device("cpu"))
    assert lengths.dtype == torch.int32 and lengths.tolist() == [33] * 5
    assert capacity_lengths(5, 33, torch.device("cpu")) is lengths
    assert capacity_lengths(5, 34, torch.device("cpu")) is not lengths


@pytest.mark.gpu
def test_prepared_calls_capture_in_cuda_graphs(cuda_device):
    """Repeats captured in CUDA graphs (with lengths, and without: the capacity's lengths tensor, made outside
    the graph): replays on fresh data match eager calls."""
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=4, query_len=1, capacity=256, dtype=torch.float16,
                                  device=cuda_device, seqlens=[1, 100, 200, 256], poison=False)
    # Not poisoned: the call without lengths reads every slot (NaN past a length would make both sides NaN).
    for kwargs in (dict(problem.kwargs), {**problem.kwargs, "cache_seqlens": None}):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # the first call (compiles, plans) outside the graph, as usual
            glacompiler.attention_with_kvcache(**kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = glacompiler.attention_with_kvcache(**kwargs)
        kwargs["q"].copy_(torch.randn_like(kwargs["q"]))
        graph.replay()
        torch.cuda.synchronize()
        expected = glacompiler.attention_with_kvcache(**kwargs)
        torch.testing.assert_close(captured, expected, rtol=0, atol=0)


@pytest.mark.gpu
def test_the_wrapper_without_grad_matches_the_op(cuda_device):
    """Under no_grad the wrapper runs the CUDA implementation without the dispatcher: same results."""
    problem = make_decode_problem(CPU_SPECS["gla2"], batch=4, query_len=2, capacity=256, dtype=torch.bfloat16,
                                  device=cuda_device, mask="bool")
    kw = problem.kwargs
    with torch.no_grad():
        for _ in range(2):  # first call and repeat
            out, lse = glacompiler.attention_with_kvcache(**kw, return_lse=True)
    op_out, op_lse = torch.ops.glacompiler.attention_with_kvcache(
        *[kw.get(name) for name in OP_ARGS], _default_scale(kw), kw["causal"], 0)
    torch.testing.assert_close(out, op_out, rtol=0, atol=0)
    torch.testing.assert_close(lse, op_lse, rtol=0, atol=0)
    check_fa_rule(out, lse, problem)


@pytest.mark.gpu
def test_lengths_made_during_capture_are_not_remembered(cuda_device):
    from glacompiler.kernels.common.key_bounds import capacity_lengths

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lengths = capacity_lengths(3, 77, cuda_device)  # filled only when the graph replays
    graph.replay()
    torch.cuda.synchronize()
    assert lengths.tolist() == [77] * 3
    remembered = capacity_lengths(3, 77, cuda_device)
    assert remembered is not lengths and remembered.tolist() == [77] * 3


@pytest.mark.gpu
@pytest.mark.parametrize("name, dtype, mask", [("gqa", torch.bfloat16, "bool"), ("gta", torch.float16, "additive"),
                                               ("gla2", torch.bfloat16, "bool"), ("gqa", torch.float16, None)])
def test_repeats_on_the_c_launcher_read_each_calls_tensors(cuda_device, fresh_memos, name, dtype, mask):
    """Repeats with the same metadata and other tensors, alternating, with the key range given (one tensor shared
    by the calls of a step, as the backend hoists it) or reduced per call: each call's own mask, range and caches
    are read. Where binary_launch knows this Triton's launcher (3.6's, 3.7 to 3.9's) the repeats take the C launcher."""
    from glacompiler.kernels.common.binary_launch import layout_known
    from glacompiler.kernels.portable import PortableLaunchPlan

    problems = [make_decode_problem(CPU_SPECS[name], batch=4, query_len=1, capacity=300, dtype=dtype,
                                    device=cuda_device, mask=mask, mask_rows="key",
                                    generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    for hoisted in (False, True):
        for problem in problems + problems:
            kw = problem.kwargs
            extra = {}
            if hoisted and mask is not None:
                extra["kv_range"] = torch.ops.glacompiler.mask_key_range(kw["attn_mask"], 4, 300)
            check_fa_rule(*_run_op(kw, **extra), problem)
    plans = [call.plan for call in prepared._prepared.values()]
    assert len(plans) == (2 if mask is not None else 1)  # with kv_range and without
    launches = [launch for plan in plans for launch in plan.launches]
    # A masked portable call is two launches (its dense and sparse passes).
    assert len(launches) == sum(2 if isinstance(plan, PortableLaunchPlan) and mask is not None else 1
                                for plan in plans)
    assert all((launch.binary is not None) == layout_known(launch.compiled) for launch in launches)
    # A portable call's passes share one conversion of the arguments once each has its binary.
    sequences = [plan.fused_launches if plan.split_counts is not None else plan.launches
                 for plan in plans if isinstance(plan, PortableLaunchPlan)]
    assert all(sequence[0].compiled is not None for sequence in sequences)
    assert all((sequence.binaries is not None) == layout_known(sequence[0].compiled) for sequence in sequences)


def _key_range_layouts(kv_range):
    """The range as made, at a storage offset (the same call key: strides and 16-byte alignment), and as a slice of
    a wider buffer (another row stride: another key)."""
    batch = kv_range.shape[1]
    at_offset = kv_range.new_zeros(3 * batch + 4)[4:].view(3, batch)
    strided = kv_range.new_zeros(3, batch + 5)[:, 4:4 + batch]
    at_offset.copy_(kv_range)
    strided.copy_(kv_range)
    return kv_range, at_offset, strided


def _check_key_range_layouts(spec, batch: int, capacity: int, dtype, device) -> None:
    """Two masked problems with no lengths (they are the range's end), alternating, each with its key range in
    every layout and with none: every call against the float64 reference."""
    problems = []
    for seed in (1, 2):
        problem = make_decode_problem(spec, batch=batch, query_len=1, capacity=capacity, dtype=dtype, device=device,
                                      seqlens=[capacity] * batch, poison=False, mask="bool", mask_rows="key",
                                      causal=False, generator=torch.Generator().manual_seed(seed))
        mask = problem.kwargs["attn_mask"]
        mask[0] = False
        mask[0, ..., 3:capacity // 2] = True  # a first sequence whose range is not the whole cache
        problem.kwargs["cache_seqlens"] = None
        problems.append(problem)
    for _ in range(2):
        for problem in problems:
            kv_range = torch.ops.glacompiler.mask_key_range(problem.kwargs["attn_mask"], batch, capacity)
            for layout in (*_key_range_layouts(kv_range), None):
                check_fa_rule(*_run_op(problem.kwargs, causal=False, kv_range=layout), problem)
    assert len(prepared._prepared) == 3  # the range contiguous (at any offset), strided, and reduced per call


@pytest.mark.parametrize("batch", [3, 5])  # rows of a range of 3 or 5 int32 are not 16-byte aligned
def test_a_key_range_of_any_layout_reaches_the_kernels_rows_interpreted(interpret_kernels, fresh_memos, batch):
    _check_key_range_layouts(CPU_SPECS["gqa"], batch, 40, torch.float32, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [3, 5])
@pytest.mark.parametrize("name", ["gqa", "gla2"])  # the portable kernels and the Hopper latent kernel
def test_a_key_range_of_any_layout_reaches_the_kernels_rows(cuda_device, fresh_memos, name, batch):
    """The binary takes a key range's rows as the range's address plus each row's offset, which the range's
    strides (part of the call's key) fix: a range at another storage offset or with another row stride reads its
    own rows."""
    from glacompiler.kernels.common.binary_launch import layout_known
    from glacompiler.presets import PAPER_SPECS

    _check_key_range_layouts(PAPER_SPECS[name], batch, 1000, torch.bfloat16, cuda_device)
    launches = [launch for call in prepared._prepared.values() for launch in call.plan.launches]
    assert all((launch.binary is not None) == layout_known(launch.compiled) for launch in launches)

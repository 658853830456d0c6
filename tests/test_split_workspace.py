"""Split partials, and LSEs the wrapper drops, held between eager calls (kernels/common/split_workspace.py): one fp32
workspace per (thread, device, stream), grown to the largest call's, on the eager wrapper's direct path alone;
allocated for every other call. CPU for the workspace's bookkeeping; the GPU for calls on two streams, calls of
several shapes on one stream, a captured call replayed among eager ones (each output against the float64 reference,
FlashAttention's rule), the dispatcher's calls, which hold nothing, and calls that drop their LSE."""
import gc
import threading
import weakref
from unittest import mock

import pytest
import torch

import glacompiler
from glacompiler.kernels.common import split_buffers, split_workspace
from glacompiler.kernels.common.split_buffers import SplitBuffers
from glacompiler.kernels.common.split_workspace import VIEW_ALIGNMENT, held_views, release_split_workspaces, \
    split_workspace_bytes
from glacompiler.presets import PAPER_SPECS
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import default_softmax_scale

from kernel_cases import CPU_SPECS


@pytest.fixture(autouse=True)
def no_workspaces(monkeypatch):
    """The test's own workspaces, none at its start (the process's come back after it)."""
    monkeypatch.setattr(split_workspace, "_per_thread", type(split_workspace._per_thread)())  # (its own kind)


def _shapes(batch: int, splits: int, head_dim_v: int = 20) -> tuple:
    return (batch, 1, 8, splits, head_dim_v), (batch, 1, 8, splits)


def _span(tensor) -> tuple:
    start = tensor.data_ptr()
    return start, start + tensor.numel() * tensor.element_size()


def test_a_repeat_gets_the_same_views_and_the_lses_start_aligned():
    q = torch.randn(2, 1, 8, 40)
    out, lse = held_views(q, (0, 7), _shapes(2, 3))
    assert out.shape == (2, 1, 8, 3, 20) and lse.shape == (2, 1, 8, 3)
    assert out.dtype == lse.dtype == torch.float32 and out.is_contiguous() and lse.is_contiguous()
    assert (lse.data_ptr() - out.data_ptr()) % (VIEW_ALIGNMENT * 4) == 0 and _span(out)[1] <= lse.data_ptr()
    again = held_views(q, (0, 7), _shapes(2, 3))
    assert again[0] is out and again[1] is lse
    assert split_workspace_bytes() == {(0, 7): 4 * sum(split_workspace._aligned(view.numel()) for view in (out, lse))}


def test_views_of_three_shapes_follow_one_another_aligned():
    q = torch.randn(2, 1, 8, 40)
    shapes = (*_shapes(2, 3), (2, 1, 8))
    views = held_views(q, (0, 7), shapes)
    assert [tuple(view.shape) for view in views] == list(shapes)
    for before, after in zip(views, views[1:]):
        assert _span(before)[1] <= after.data_ptr()
        assert (after.data_ptr() - views[0].data_ptr()) % (VIEW_ALIGNMENT * 4) == 0
    # the first two shapes alone: another memo entry, over the same memory
    assert held_views(q, (0, 7), shapes[:2])[0].data_ptr() == views[0].data_ptr()


def test_shapes_share_a_streams_workspace_which_grows_to_the_largest():
    q = torch.randn(1, 1, 8, 40)
    small_out, _ = held_views(q, (0, 7), _shapes(1, 2))
    small_bytes = split_workspace_bytes()[(0, 7)]
    smaller_out, _ = held_views(q, (0, 7), _shapes(1, 1))
    assert smaller_out.data_ptr() == small_out.data_ptr() and split_workspace_bytes()[(0, 7)] == small_bytes
    large_out, large_lse = held_views(q, (0, 7), _shapes(4, 8))
    assert split_workspace_bytes()[(0, 7)] > small_bytes
    # A grown workspace is a new buffer: the small shape's views are made again, in it.
    small_again, _ = held_views(q, (0, 7), _shapes(1, 2))
    assert small_again.data_ptr() == large_out.data_ptr() != small_out.data_ptr()
    assert large_lse.numel() == 4 * 8 * 8


def test_each_stream_has_its_own_workspace():
    q = torch.randn(1, 1, 8, 40)
    first, second = (held_views(q, (0, stream), _shapes(2, 4)) for stream in (7, 9))
    spans = sorted(_span(tensor) for tensor in (*first, *second))
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))  # no overlap
    assert set(split_workspace_bytes()) == {(0, 7), (0, 9)}


def test_each_thread_has_its_own_workspaces_freed_when_it_ends():
    """Two threads on one stream: another thread's launches can come between a call's split kernel and its combine,
    so they must not share partials."""
    q = torch.randn(1, 1, 8, 40)
    mine = held_views(q, (0, 7), _shapes(2, 4))
    theirs = []

    def other_thread():
        views = held_views(q, (0, 7), _shapes(2, 4))
        theirs.append((views[0].data_ptr(), weakref.ref(split_workspace._workspaces()[(0, 7)].buffer),
                       set(split_workspace_bytes())))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    pointer, buffer, keys = theirs[0]
    spans = sorted([_span(mine[0]), _span(mine[1])])
    assert keys == {(0, 7)} and not any(start <= pointer < end for start, end in spans)
    gc.collect()
    assert buffer() is None  # (the thread's workspaces went with it)
    assert held_views(q, (0, 7), _shapes(2, 4))[0] is mine[0]


def test_release_drops_every_workspace():
    q = torch.randn(1, 1, 8, 40)
    out, _ = held_views(q, (0, 7), _shapes(1, 2))
    release_split_workspaces()
    assert split_workspace_bytes() == {}
    assert held_views(q, (0, 7), _shapes(1, 2))[0] is not out


def test_a_workspaces_views_are_bounded(monkeypatch):
    monkeypatch.setattr(split_workspace, "MAX_VIEWS_PER_WORKSPACE", 2)
    q = torch.randn(1, 1, 8, 40)
    first = held_views(q, (0, 7), _shapes(1, 4))
    for splits in (3, 2):
        held_views(q, (0, 7), _shapes(1, splits))
    workspace = split_workspace._workspaces()[(0, 7)]
    assert len(workspace.views) == 1  # emptied at the third shape, which is the one left
    assert held_views(q, (0, 7), _shapes(1, 4))[0] is not first[0]


@pytest.mark.parametrize("keep_lse", [True, False])
@pytest.mark.parametrize("splits", [1, 4])
def test_calls_off_cuda_allocate_their_buffers(splits, keep_lse, interpret_kernels):
    # (interpret_kernels: several splits make the combine's launch, which loads triton)
    q = torch.randn(2, 1, 8, 64, dtype=torch.float16)
    buffers = SplitBuffers(q, 24, num_splits=splits)
    split_out, split_lse, out, lse = buffers.allocate_for_call(q, hold=True, keep_lse=keep_lse)
    assert split_workspace_bytes() == {}
    assert out.shape == (2, 1, 8, 24) and out.dtype == torch.float16 and lse.dtype == torch.float32
    assert buffers.are_targets(q, split_out, split_lse)
    assert (split_out is out) == (splits == 1)


def test_only_the_wrappers_direct_path_asks_to_hold(monkeypatch, interpret_kernels):
    """Which calls ask to hold (CPU, the interpreter; the GPU tests below check what holding does): the op through
    the dispatcher, and the tuner's calls with a config, do not; the wrapper's direct path does."""
    asked = []
    allocate_for_call = SplitBuffers.allocate_for_call

    def recording(buffers, q, hold, keep_lse=True):
        asked.append(hold)
        return allocate_for_call(buffers, q, hold, keep_lse)

    monkeypatch.setattr(SplitBuffers, "allocate_for_call", recording)
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=2, query_len=1, capacity=64, dtype=torch.float32,
                                  generator=torch.Generator().manual_seed(0))
    kw = problem.kwargs
    with torch.no_grad():  # (CPU tensors take the dispatcher)
        check_fa_rule(*glacompiler.attention_with_kvcache(**kw, num_splits=2, return_lse=True), problem)
        config = glacompiler.PortableConfig(block_n=16, num_splits=2)
        check_fa_rule(*glacompiler.attention_with_kvcache_config(**kw, config=config), problem)
        assert asked == [False, False]
        monkeypatch.setattr(glacompiler.op, "_runs_directly", lambda q: True)  # the direct path, as on CUDA
        check_fa_rule(*glacompiler.attention_with_kvcache(**kw, num_splits=2, return_lse=True), problem)
    assert asked == [False, False, True]


# GPU: one portable family (GQA) and the Hopper latent family (MLA at the paper's widths), each forced to split.
GPU_CASES = {"gqa": (CPU_SPECS["gqa"], 8), "mla": (PAPER_SPECS["mla"], 4)}


def _gpu_problem(name: str, batch: int, seed: int, device):
    spec, _ = GPU_CASES[name]
    return make_decode_problem(spec, batch=batch, query_len=1, capacity=1024, dtype=torch.bfloat16, device=device,
                               generator=torch.Generator().manual_seed(seed))


def _split_call(problem, splits: int):
    with torch.no_grad():  # the wrapper's direct path, as a decode step's
        return glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=splits, return_lse=True)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_split_calls_on_two_streams_hold_their_own_partials(cuda_device, name):
    """Two streams call back to back with no synchronisation between them, each on its own problem: every output is
    right, and each stream holds a workspace."""
    _, splits = GPU_CASES[name]
    problems = [_gpu_problem(name, 2, seed, cuda_device) for seed in (1, 2)]
    streams = [torch.cuda.Stream() for _ in problems]
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    results = [[], []]
    for _ in range(8):
        for index, (stream, problem) in enumerate(zip(streams, problems)):
            with torch.cuda.stream(stream):
                results[index].append(_split_call(problem, splits))
    torch.cuda.synchronize()
    for problem, outputs in zip(problems, results):
        for out, lse in outputs:
            check_fa_rule(out, lse, problem)
    keys = {(cuda_device.index or 0, stream.cuda_stream) for stream in streams}
    assert keys <= set(split_workspace_bytes())


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_split_calls_of_several_shapes_share_a_streams_workspace(cuda_device, name):
    """Calls of two batch sizes and split counts, alternating on one stream with no synchronisation: each call
    writes partials where the last one's combine read them, in stream order; every output is right."""
    _, splits = GPU_CASES[name]
    cases = [(_gpu_problem(name, 2, 3, cuda_device), splits), (_gpu_problem(name, 5, 4, cuda_device), 2 * splits)]
    results = [[_split_call(problem, count) for problem, count in cases] for _ in range(6)]
    torch.cuda.synchronize()
    for outputs in results:
        for (problem, _), (out, lse) in zip(cases, outputs):
            check_fa_rule(out, lse, problem)
    assert len(split_workspace_bytes()) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_a_captured_split_call_keeps_its_own_partials(cuda_device, name):
    """A split call captured into a CUDA graph allocates its partials from the graph's pool, not the stream's
    workspace: replays interleaved with eager split calls of another problem stay right."""
    _, splits = GPU_CASES[name]
    captured_problem, eager_problem = (_gpu_problem(name, 2, seed, cuda_device) for seed in (5, 6))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # the first call (compiles, plans) outside the graph, as usual
        _split_call(captured_problem, splits)
    torch.cuda.current_stream().wait_stream(stream)
    held = split_workspace_bytes()
    views_taken = []
    real_held_views = split_buffers.held_views

    def spying(*arguments):
        views_taken.append(torch.cuda.is_current_stream_capturing())
        return real_held_views(*arguments)

    graph = torch.cuda.CUDAGraph()
    with mock.patch.object(split_buffers, "held_views", spying), torch.cuda.graph(graph):
        captured_out, captured_lse = _split_call(captured_problem, splits)
        with torch.no_grad():  # and a captured call that drops its LSE
            captured_dropping = glacompiler.attention_with_kvcache(**captured_problem.kwargs, num_splits=splits)
    assert views_taken == [] and split_workspace_bytes() == held  # the capture took no view and made no workspace
    eager = []
    for _ in range(4):
        graph.replay()
        eager.append(_split_call(eager_problem, splits))
        graph.replay()
    torch.cuda.synchronize()
    check_fa_rule(captured_out, captured_lse, captured_problem)
    assert torch.equal(captured_dropping, captured_out)
    for out, lse in eager:
        check_fa_rule(out, lse, eager_problem)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_only_the_wrappers_direct_path_holds_partials(cuda_device, name):
    """The op through the dispatcher (what a compiled graph calls), a call with a config (the tuner's) and the wrapper
    with grad on allocate their partials; the wrapper under no_grad holds them. Every output is right."""
    _, splits = GPU_CASES[name]
    problem = _gpu_problem(name, 2, 8, cuda_device)
    kw = problem.kwargs
    op_arguments = [kw.get(argument) for argument in ("q", "k_cache", "v_cache", "q_rope", "k_rope_cache",
                                                       "cache_seqlens", "page_table", "attn_mask")]
    scale = default_softmax_scale(problem.spec.head_dim_q, problem.spec.rope_dim)
    # the tuner's calls: a portable config (MLA's 512-wide output over 4 programs, for a narrow accumulator)
    config = glacompiler.PortableConfig(block_m=16, num_splits=splits, dv_split=4 if name == "mla" else 1)
    with torch.no_grad():
        outputs = [torch.ops.glacompiler.attention_with_kvcache(*op_arguments, scale, kw["causal"], splits),
                   glacompiler.attention_with_kvcache_config(**kw, config=config)]
    outputs.append(glacompiler.attention_with_kvcache(**kw, num_splits=splits, return_lse=True))  # grad on
    torch.cuda.synchronize()
    assert split_workspace_bytes() == {}
    outputs.append(_split_call(problem, splits))
    torch.cuda.synchronize()
    assert len(split_workspace_bytes()) == 1
    for out, lse in outputs:
        check_fa_rule(out, lse, problem)


def _in_a_workspace(tensor) -> bool:
    """Whether tensor's memory overlaps any workspace of this thread."""
    start, end = _span(tensor)
    return any(_span(workspace.buffer)[0] < end and start < _span(workspace.buffer)[1]
               for workspace in split_workspace._workspaces().values())


@pytest.mark.gpu
@pytest.mark.parametrize("splits_of", [lambda splits: splits, lambda splits: 1], ids=["split", "one split"])
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_calls_that_drop_their_lse_hold_it(cuda_device, name, splits_of):
    """The wrapper without return_lse holds the LSE it drops and gives the same output as with return_lse, bit for
    bit (the same plan); outputs never lie in a workspace, so an LSE returned earlier on the stream is left as it was
    by later calls (on another problem of the same shapes, whose LSEs differ)."""
    splits = splits_of(GPU_CASES[name][1])
    returned_problem, dropping_problem = (_gpu_problem(name, 3, seed, cuda_device) for seed in (7, 9))
    returned_out, returned_lse = _split_call(returned_problem, splits)
    expected_lse = returned_lse.clone()
    with torch.no_grad():
        outs = [glacompiler.attention_with_kvcache(**dropping_problem.kwargs, num_splits=splits) for _ in range(3)]
    dropping_out, dropping_lse = _split_call(dropping_problem, splits)
    torch.cuda.synchronize()
    # the workspace holds the dropped LSE's view after the partials (one split: the LSE alone)
    views = split_workspace._workspaces()[(cuda_device.index or 0, torch.cuda.current_stream().cuda_stream)].views
    held_lses = [shapes[-1] for shapes in views if shapes[-1] == tuple(dropping_lse.shape)]
    assert held_lses, list(views)
    for out in outs:
        assert torch.equal(out, dropping_out) and not _in_a_workspace(out)
    assert not any(_in_a_workspace(tensor) for tensor in (returned_out, returned_lse, dropping_lse))
    assert torch.equal(returned_lse, expected_lse) and not torch.equal(returned_lse, dropping_lse)
    check_fa_rule(returned_out, returned_lse, returned_problem)
    check_fa_rule(dropping_out, dropping_lse, dropping_problem)

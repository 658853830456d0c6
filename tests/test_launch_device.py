"""Calls whose tensors are on a GPU other than the current one launch on theirs (kernels/common/launch_device.py):
Triton launches on the current device, so without the switch such a call would run on the wrong GPU. CPU: the
decision and that each launching entry point enters the device; two GPUs: the op (with a masked call's key range)
on the second GPU while the first is current, every launch on the second, against the same calls made there."""
import contextlib

import pytest
import torch

import glacompiler
from glacompiler.kernels.common import combine, launch_device, mask_range, triton_launch
from glacompiler.op import prepared
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import AttentionSpec


class OnDevice:
    """A stand-in tensor on CUDA device `index` (this machine has no GPU)."""

    def __init__(self, index: int):
        self.index = index

    def get_device(self) -> int:
        return self.index


@pytest.mark.parametrize("tensor_device, traced, expected", [
    (1, False, 1),    # another GPU: enter it
    (0, False, -1),   # the current GPU: nothing to do
    (-1, False, -1),  # a CPU tensor: the current device is not asked (a CPU-only build has none)
    (1, True, -1),    # a launch traced into a graph: the graph's code enters its device; not asked either
])
def test_the_device_to_enter(monkeypatch, tensor_device, traced, expected):
    def current_device():
        if tensor_device < 0 or traced:
            raise AssertionError("the current device asked for")
        return 0

    monkeypatch.setattr(torch._C, "_cuda_getDevice", current_device, raising=False)
    with triton_launch.traced_launches() if traced else contextlib.nullcontext():
        assert launch_device.other_cuda_device(OnDevice(tensor_device)) == expected


@pytest.fixture
def entered_devices(monkeypatch):
    """torch.cuda.device recorded instead of entered, and every tensor taken for one on GPU 1 while GPU 0 is
    current until that device is entered: the devices the entry points enter."""
    entered = []

    @contextlib.contextmanager
    def recording_device(index):
        entered.append(index)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
        yield
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def on_gpu_1(tensor) -> int:
        return -1 if torch.cuda.current_device() == 1 else 1

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", recording_device)
    for module in (prepared, mask_range, combine):
        monkeypatch.setattr(module, "other_cuda_device", on_gpu_1)
    return entered


def test_an_op_call_and_its_key_range_launch_under_their_device(interpret_kernels, entered_devices):
    """A masked call (its key range, then the op's prepared call) on 'GPU 1' enters device 1 for each, once, and
    still computes the reference's answer (the kernels under the interpreter)."""
    problem = make_decode_problem(AttentionSpec.grouped(4, 2, 16), batch=2, query_len=1, capacity=48, mask="bool",
                                  mask_rows="key", causal=False, dtype=torch.float32, poison=False,
                                  generator=torch.Generator().manual_seed(5))
    key_range = glacompiler.mask_key_range(problem.kwargs["attn_mask"], 2, 48)
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, kv_range=key_range, num_splits=2,
                                                  return_lse=True)
    assert entered_devices == [1, 1]
    check_fa_rule(out, lse, problem)


def test_the_public_combine_enters_its_device(interpret_kernels, entered_devices):
    from test_combine import partial_outputs

    split_out, split_lse = partial_outputs(5, 3, 16, torch.Generator().manual_seed(2))
    out, lse = torch.empty(5, 16), torch.empty(5)
    combine.combine_splits(split_out, split_lse, out, lse)
    assert entered_devices == [1]
    expected_out, expected_lse = combine.combine_splits_reference(split_out, split_lse)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["gqa split", "gqa masked", "mla"])
def test_calls_on_a_gpu_other_than_the_current_one(kind):
    """The op on GPU 1 while GPU 0 is current, planned and compiled from there: every launch on GPU 1 (Triton's
    launch hook sees the current device), GPU 0 still current after, the answer bit for bit that of the same call
    made with GPU 1 current, and the reference's (the FA rule)."""
    from triton import knobs

    assert torch.cuda.device_count() >= 2, "this test needs 2 GPUs (run it on the 2-GPU machine)"
    spec = AttentionSpec.latent(16, 1, 512, rope_dim=64) if kind == "mla" else AttentionSpec.grouped(16, 4, 128)
    extra = dict(mask="bool", mask_rows="key", causal=False) if kind == "gqa masked" else {}
    second = torch.device("cuda", 1)
    problem = make_decode_problem(spec, batch=3, query_len=2, capacity=1024, page_size=64, dtype=torch.bfloat16,
                                  device=second, generator=torch.Generator().manual_seed(11), **extra)

    def call():
        mask = problem.kwargs.get("attn_mask")
        key_range = None if mask is None else glacompiler.mask_key_range(mask, 3, 1024)
        return glacompiler.attention_with_kvcache(**problem.kwargs, kv_range=key_range, return_lse=True,
                                                  num_splits=2 if kind == "gqa split" else None)

    prepared.clear_prepared_calls()  # (planned and compiled from GPU 0's side)
    launched_on = []

    def record(metadata):
        launched_on.append(torch.cuda.current_device())

    # (a hook also sends every launch through Triton's own path, which calls it; triton 3.6 on chain them)
    knobs.runtime.launch_enter_hook.add(record)
    try:
        with torch.cuda.device(0):
            out, lse = call()
            assert torch.cuda.current_device() == 0
    finally:
        knobs.runtime.launch_enter_hook.remove(record)
    assert launched_on and set(launched_on) == {1}, launched_on
    with torch.cuda.device(second):
        expected_out, expected_lse = call()
    with torch.cuda.device(0):
        repeat_out, repeat_lse = call()  # (the repeat's direct launch of the binary)
    torch.cuda.synchronize(second)
    for result in ((out, lse), (repeat_out, repeat_lse)):
        assert torch.equal(result[0], expected_out) and torch.equal(result[1], expected_lse)
    check_fa_rule(out, lse, problem)

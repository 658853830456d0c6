"""Calls whose tensors are on a GPU other than the current one launch on theirs (kernels/common/launch_device.py):
Triton launches on the current device, so without the switch such a call would run on the wrong GPU. CPU: the
decision and that each launching entry point enters the device; two GPUs: the op, a masked call's key range and a
Hopper latent call on the second GPU while the first is current, against the same calls made there."""
import contextlib

import pytest
import torch

import glacompiler
from glacompiler.kernels.common import launch_device, mask_range, triton_launch
from glacompiler.op import prepared
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import AttentionSpec


class OnDevice:
    """A stand-in tensor on CUDA device `index` (this machine has no GPU)."""

    def __init__(self, index: int):
        self.index = index

    def get_device(self) -> int:
        return self.index


@pytest.mark.parametrize("tensor_device, current, traced, expected", [
    (1, 0, False, 1),    # another GPU: enter it
    (0, 0, False, -1),   # the current GPU: nothing to do
    (-1, 0, False, -1),  # a CPU tensor
    (1, 0, True, -1),    # a launch traced into a graph: the graph's code enters its device
])
def test_the_device_to_enter(monkeypatch, tensor_device, current, traced, expected):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
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
    for module in (prepared, mask_range):
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


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["gqa split", "gqa masked", "mla"])
def test_calls_on_a_gpu_other_than_the_current_one(kind):
    """The op on GPU 1 while GPU 0 is current: the answer of the same call made with GPU 1 current, bit for bit, and
    the reference's (the FA rule); GPU 0 stays current."""
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

    with torch.cuda.device(second):
        expected_out, expected_lse = call()
    torch.cuda.set_device(0)
    out, lse = call()
    assert torch.cuda.current_device() == 0 and out.device == second
    assert torch.equal(out, expected_out) and torch.equal(lse, expected_lse)
    check_fa_rule(out, lse, problem)

"""attention_into (glacompiler/op/into_buffers.py): the op's kernels launched into buffers a compiled graph
allocated, on the CPU machine. That the graph makes these calls, and that a repeat launches the Hopper kernel as the
op's own call does, is tests/graph_launch_cases.py's (it loads Gluon, which this process's interpreter mode cannot);
that they run on a GPU and give the op's results, tests/test_graph_launches_gpu.py's."""
import os
import subprocess
import sys

import pytest
import torch

from glacompiler.kernels.common.addresses import misaligned
from glacompiler.kernels.common.combine import combine_splits_reference
from glacompiler.op import prepared
from glacompiler.op.into_buffers import INTO_ARGUMENTS, plan_key, run_into
from glacompiler.op.prepared import clear_prepared_calls
from glacompiler.problems import check_fa_rule, make_decode_problem

from into_buffers_helpers import into_arguments, split_buffers
from kernel_cases import CPU_SPECS


def test_its_arguments_are_the_ops_without_the_split_count():
    op = [a.name for a in torch.ops.glacompiler.attention_with_kvcache.default._schema.arguments]
    into = [a.name for a in torch.ops.glacompiler.attention_into.default._schema.arguments]
    assert into == [*INTO_ARGUMENTS, "plan_key", "out", "lse"]
    assert list(INTO_ARGUMENTS) == [name for name in op if name != "num_splits"]
    assert torch.ops.glacompiler.attention_into.default._schema.is_mutable


@pytest.mark.parametrize("splits", [1, 3])
def test_a_call_whose_kernels_cannot_write_the_buffers_copies_the_ops_results(interpret_kernels, splits):
    """Where the family the graph was compiled for refuses the real tensors (here the Hopper family, off sm_90),
    the op's own call runs and its results land in the buffers so that the graph's combine gives them back."""
    clear_prepared_calls()
    problem = make_decode_problem(CPU_SPECS["gla2"], batch=3, query_len=2, capacity=70, page_size=16,
                                  seqlens=[0, 33, 70], generator=torch.Generator().manual_seed(5))
    arguments = into_arguments(problem)
    out, lse = split_buffers(problem.kwargs["q"], problem.spec.head_dim_v, splits)
    run_into(*arguments.values(), 777, out, lse)
    assert not prepared.calls_into_buffers[777].into_buffers
    if splits > 1:
        out, lse = combine_splits_reference(out, lse)
    check_fa_rule(out.float(), lse.float(), problem)
    clear_prepared_calls()


def test_the_plan_key_holds_metadata_not_values():
    q = torch.randn(2, 1, 8, 64)
    same = torch.randn(2, 1, 8, 64)
    keys = {plan_key((q, 0.5, None)), plan_key((same, 0.5, None))}
    assert len(keys) == 1 and 0 <= next(iter(keys)) < 2 ** 63
    strided = torch.randn(2, 8, 1, 64).transpose(1, 2)  # q's shape, other strides
    assert strided.shape == q.shape and strided.stride() != q.stride()
    others = {plan_key((q.half(), 0.5, None)), plan_key((q.transpose(1, 2), 0.5, None)), plan_key((strided, 0.5, None)),
              plan_key((torch.randn(1026)[2:].view(2, 1, 8, 64), 0.5, None)), plan_key((q, 0.25, None)),
              plan_key((q, 0.5, q))}
    assert len(others | keys) == 7


def test_the_plan_key_is_the_same_in_another_process():
    """The key is a constant of the graph's code, by which Inductor finds its cached graphs: it must not change with
    the process (as Python's salted hash of a str would)."""
    code = ("import torch; from glacompiler.op.into_buffers import plan_key; "
            "print(plan_key((torch.empty(2, 1, 8, 64, dtype=torch.float16), 0.5, 'x', None)))")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert keys == {str(plan_key((torch.empty(2, 1, 8, 64, dtype=torch.float16), 0.5, "x", None)))}


def test_a_fake_tensors_alignment_is_its_storage_offsets():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        storage = torch.empty(64, dtype=torch.float16)
        assert not misaligned(storage) and not misaligned(storage[8:]) and misaligned(storage[4:])
    real = torch.empty(64, dtype=torch.float16)
    assert misaligned(real[4:]) == (real[4:].data_ptr() % 16 != 0)

"""attention_into's arguments and buffers for a decode problem, as a compiled graph passes them (the tests of
tests/test_into_buffers.py and tests/graph_launch_cases.py)."""
import torch

from glacompiler.op.into_buffers import INTO_ARGUMENTS
from glacompiler.spec import default_softmax_scale


def split_buffers(q, head_dim_v: int, splits: int) -> tuple:
    """(out, lse) as SplitBuffers.allocate makes them (the graph's allocations): the op's outputs with one split,
    else the partial outputs and LSEs, NaN-filled (the kernels must write every entry the combine reads)."""
    rows = tuple(q.shape[:3]) + ((splits,) if splits > 1 else ())
    return (torch.full((*rows, head_dim_v), float("nan"), dtype=q.dtype if splits == 1 else torch.float32),
            torch.full(rows, float("nan"), dtype=torch.float32))


def into_arguments(problem) -> dict:
    """attention_into's arguments but the plan key and buffers, by name: the problem's tensors, its spec's default
    scale, causal, no extensions."""
    spec = problem.spec
    values = dict(softmax_scale=default_softmax_scale(spec.head_dim_q, spec.rope_dim), causal=True, kv_range=None,
                  softcap=0.0, alibi_slopes=None, sinks=None, window_left=-1, window_right=-1)
    return {name: problem.kwargs.get(name, values.get(name)) for name in INTO_ARGUMENTS}

"""attention_into's arguments and buffers for a decode problem, as a compiled graph passes them (the tests of
tests/test_into_buffers.py and tests/graph_launch_cases.py)."""
from glacompiler.kernels.common.split_buffers import SplitBuffers
from glacompiler.op.into_buffers import INTO_ARGUMENTS
from glacompiler.spec import default_softmax_scale


def split_buffers(q, head_dim_v: int, splits: int) -> tuple:
    """(out, lse) as the graph allocates them (SplitBuffers.allocate's first two: the op's outputs with one split,
    else the partial outputs and LSEs), NaN-filled (the kernels must write every entry the combine reads)."""
    out, lse = SplitBuffers(q, head_dim_v, splits).allocate(q)[:2]
    return out.fill_(float("nan")), lse.fill_(float("nan"))


def into_arguments(problem) -> dict:
    """attention_into's arguments but the plan key and buffers, by name: the problem's tensors, its spec's default
    scale, causal, no extensions."""
    spec = problem.spec
    values = dict(softmax_scale=default_softmax_scale(spec.head_dim_q, spec.rope_dim), causal=True, kv_range=None,
                  softcap=0.0, alibi_slopes=None, sinks=None, window_left=-1, window_right=-1)
    return {name: problem.kwargs.get(name, values.get(name)) for name in INTO_ARGUMENTS}

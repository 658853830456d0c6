"""Bad FlashAttention-extension arguments: a ValueError or TypeError naming the argument, before any kernel runs
(the op's PyTorch path, the torch.library op and the explicit-config path all check them)."""
import pytest
import torch

import glacompiler
from glacompiler.problems import make_decode_problem

from kernel_cases import CPU_SPECS


def problem(name="gqa", batch=2):
    return make_decode_problem(CPU_SPECS[name], batch=batch, query_len=1, capacity=20,
                               generator=torch.Generator().manual_seed(0)).kwargs


HEADS = CPU_SPECS["gqa"].num_q_heads
BAD = [
    (dict(softcap="1"), TypeError, "softcap must be a float"),
    (dict(softcap=True), TypeError, "softcap must be a float"),
    (dict(softcap=None), TypeError, "softcap must be a float"),  # (falsy, yet no number: not "off")
    (dict(softcap=""), TypeError, "softcap must be a float"),
    (dict(softcap=1e39), ValueError, "softcap must be a finite float from 0"),  # (its float32 log2 scale overflows)
    (dict(softcap=-1.0), ValueError, "softcap must be a finite float from 0"),
    (dict(softcap=float("nan")), ValueError, "softcap must be a finite float from 0"),
    (dict(softcap=float("inf")), ValueError, "softcap must be a finite float from 0"),
    (dict(alibi_slopes=[0.5] * HEADS), TypeError, "alibi_slopes must be a torch.Tensor"),
    (dict(alibi_slopes=torch.ones(HEADS, dtype=torch.float16)), TypeError, "alibi_slopes must be float32"),
    (dict(alibi_slopes=torch.ones(HEADS + 1)), ValueError, r"alibi_slopes must have shape \[Hq\]"),
    (dict(alibi_slopes=torch.ones(3, HEADS)), ValueError, r"alibi_slopes must have shape \[Hq\]"),
    (dict(alibi_slopes=torch.ones(HEADS, 2)[:, 0]), ValueError, "alibi_slopes must be contiguous"),
    (dict(sinks=1.0), TypeError, "sinks must be a torch.Tensor"),
    (dict(sinks=torch.ones(HEADS, dtype=torch.float64)), TypeError, "sinks must be float32 or q's dtype"),
    (dict(sinks=torch.ones(2, HEADS)), ValueError, r"sinks must have shape \[Hq\]"),
    (dict(window_size=5), TypeError, "window_size must be a pair of ints"),
    (dict(window_size=(4,)), TypeError, "window_size must be a pair of ints"),
    (dict(window_size=(4.0, -1)), TypeError, "window_size must be a pair of ints"),
    (dict(window_size=(-2, 0)), ValueError, "window_size entries must be >= -1"),
]


@pytest.mark.parametrize("arguments, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_extension_arguments_name_themselves(arguments, error, message):
    with pytest.raises(error, match=message):
        glacompiler.attention_with_kvcache(**problem(), **arguments)


@pytest.mark.parametrize("arguments", [dict(softcap=30.0), dict(alibi_slopes=torch.ones(16))])
@pytest.mark.parametrize("name", ["mla", "gla2"])
def test_latent_layouts_refuse_softcap_and_alibi(name, arguments):
    argument = next(iter(arguments))
    with pytest.raises(ValueError, match=f"{argument} is not supported for latent"):
        glacompiler.attention_with_kvcache(**problem(name), **arguments)


def test_the_library_op_and_the_config_path_check_too(interpret_kernels):
    from glacompiler.kernels.portable import PortableConfig

    kw = problem()
    with pytest.raises(ValueError, match="window_size entries"):
        torch.ops.glacompiler.attention_with_kvcache(kw["q"], kw["k_cache"], kw["v_cache"], None, None,
                                                     kw["cache_seqlens"], None, None, 0.1, True, 0, None, 0.0, None,
                                                     None, -3, -1)
    with pytest.raises(TypeError, match="alibi_slopes must be float32"):
        glacompiler.attention_with_kvcache_config(**kw, config=PortableConfig(),
                                                  alibi_slopes=torch.ones(HEADS, dtype=torch.int32))
    with pytest.raises(TypeError, match="config must be one of"):
        glacompiler.attention_with_kvcache_config(**kw, config=dict(block_m=16))


def test_numpy_scalars_are_taken_as_their_python_values():
    import numpy

    kw = {**problem(), "softmax_scale": 0.25, "causal": True}
    plain = glacompiler.attention_with_kvcache(**kw)
    for arguments in (dict(softcap=numpy.float32(0)), dict(softmax_scale=numpy.float32(0.25)),
                      dict(causal=numpy.True_), dict(causal=numpy.int64(1))):
        taken = glacompiler.attention_with_kvcache(**{**kw, **arguments})
        assert torch.equal(taken, plain), arguments
    with pytest.raises(TypeError, match=r"causal must be a bool.*pass bool\(causal\)"):
        glacompiler.attention_with_kvcache(**{**kw, "causal": torch.tensor(True)})


def test_sinks_in_the_query_dtype_and_batched_slopes_are_taken():
    kw = problem()
    kw["q"] = kw["q"].half()
    for name in ("k_cache", "v_cache"):
        kw[name] = kw[name].half()
    out = glacompiler.attention_with_kvcache(**kw, sinks=torch.zeros(HEADS, dtype=torch.float16),
                                             alibi_slopes=torch.rand(2, HEADS), softcap=20.0, window_size=[3, 0])
    assert out.shape == kw["q"].shape[:3] + (CPU_SPECS["gqa"].head_dim_v,) and torch.isfinite(out).all()


def test_the_config_path_takes_numpy_flags_too(interpret_kernels):
    import numpy
    from glacompiler.kernels.portable import PortableConfig

    kw = {**problem(), "softmax_scale": 0.25}
    config = PortableConfig(block_m=16, block_n=16, block_d=16, num_splits=2)
    plain, _ = glacompiler.attention_with_kvcache_config(**{**kw, "causal": True}, config=config)
    taken, _ = glacompiler.attention_with_kvcache_config(**{**kw, "causal": numpy.True_, "softcap": numpy.float32(0)},
                                                         config=config)
    assert torch.equal(taken, plain)

"""One rank of the tensor-parallel checks (no tests here): tests/test_tensor_parallel.py spawns it on 2 gloo
processes (CPU, fp32) and, marked gpu, on 2 NCCL processes (bf16).

Each rank builds the full one-layer TinyLM (the single-process reference, fp32) and a copy sharded with
glacompiler.parallel, prefills both and decodes a few steps with the same tokens, eagerly and compiled with
backend="gla" over the plain-PyTorch decode (the pass must fuse the per-rank attention), and compares the
logits and the caches: each rank's cache must hold exactly its slice of the reference cache."""
from __future__ import annotations

import copy
import faulthandler
import os

import torch

BATCH, PROMPT, CAPACITY, STEPS = 2, 20, 32, 3
GPU_RANK_TIMEOUT_S = 600


def sharded_slices(reference_cache, sharded_cache, kind: str, rank: int, world: int) -> list:
    """(reference slice, sharded tensor) pairs: heads of the rank for k/v (MLA: the whole latent), and the whole
    shared rope key."""
    pairs = []
    for name in ("k_cache", "v_cache"):
        full, local = getattr(reference_cache, name), getattr(sharded_cache, name)
        if full is None:
            assert local is None, name
            continue
        per_rank = full.shape[2] if kind == "mla" else full.shape[2] // world
        assert local.shape[2] == per_rank, (name, local.shape, full.shape)
        start = 0 if kind == "mla" else rank * per_rank
        pairs.append((full[:, :, start:start + per_rank], local))
    if reference_cache.k_rope_cache is not None:
        pairs.append((reference_cache.k_rope_cache, sharded_cache.k_rope_cache))
    return pairs


class Comparison:
    """fp32: relative max error 1e-4. Lower precision: FlashAttention's rule, the sharded model's error against
    the fp32 reference at most 2x the unsharded model's error in the same precision, plus rounding."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def check(self, actual, expected, baseline, what: str) -> float:
        from glacompiler.problems import max_error, rounding_atol

        error = max_error(actual.float(), expected.float())
        if self.dtype == torch.float32:
            limit = 1e-4 * expected.abs().max().item()
        else:
            limit = 2 * max_error(baseline.float(), expected.float()) + rounding_atol(expected.float(), self.dtype)
        assert error <= limit, f"{what}: error {error:.3e} over {limit:.3e}"
        return error


# On CPU the full backend (Inductor's C++ compile, ~10 s a graph on 2 cores) runs for GLA only; the other kinds
# go through PassHarness (test_backend_support: dynamo, AOT and our pass, the rewritten graph run eagerly), as in
# test_backend_models. On GPUs every kind runs the full backend with CUDA graphs.
FULL_BACKEND_KIND_ON_CPU = "gla"


def compiled_decode(decode, full_backend: bool, on_gpu: bool):
    """(step(tokens, lengths), records()) of decode compiled with our pass."""
    import glacompiler
    from glacompiler.compiler import backend as gla_backend
    from test_backend_support import PassHarness

    torch._dynamo.reset()
    glacompiler.reset_report()
    if not full_backend:
        harness = PassHarness(decode)
        return harness, lambda: harness.result().records
    compiled = torch.compile(decode, backend=gla_backend(cudagraphs=on_gpu))

    def step(tokens, lengths):
        if on_gpu:
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(tokens, lengths)

    return step, glacompiler.compile_report


def check_attention_alone(reference, target, dtype, mesh, compare, variant: str) -> float:
    """shard_attention on a bare attention module: prefill and one decode step equal the whole module's."""
    from glacompiler.parallel import shard_attention

    whole = reference.layers[0].attention
    baseline = copy.deepcopy(whole).to(target, dtype)
    sharded = shard_attention(copy.deepcopy(whole).to(target, dtype), mesh)
    hidden = torch.randn(BATCH, PROMPT + 1, whole.config.d_model, generator=torch.Generator().manual_seed(3))
    lengths = torch.full((BATCH,), PROMPT + 1, dtype=torch.int32)
    worst = 0.0
    outputs = []
    for module, where in ((whole, torch.device("cpu")), (baseline, target), (sharded, target)):
        cache = module.new_cache(BATCH, CAPACITY)
        x = hidden.to(where, next(module.parameters()).dtype if module is whole else dtype)
        outputs.append((module.prefill(x[:, :PROMPT], cache).cpu(),
                        module.decode(x[:, PROMPT:], cache, lengths.to(where)).cpu()))
    for index in range(2):
        worst = max(worst, compare.check(outputs[2][index], outputs[0][index], outputs[1][index],
                                         f"{variant} attention alone {('prefill', 'decode')[index]}"))
    return worst


def run_rank(rank: int, world: int, port: int, device: str, dtype_name: str, variants: list, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), TORCHINDUCTOR_COMPILE_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from glacompiler.demo import install_plain_decode, mark_caches_static
    from glacompiler.models import TinyLM
    from glacompiler.parallel import cache_bytes_per_device, init_tensor_parallel, shard_model
    from glacompiler.presets import tiny_config

    mesh = init_tensor_parallel(world, device=device)
    on_gpu = device == "cuda"
    if on_gpu:  # a hung NCCL capture cannot be interrupted: end the rank with its traceback instead
        faulthandler.dump_traceback_later(GPU_RANK_TIMEOUT_S, exit=True)
    target = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    dtype = getattr(torch, dtype_name)
    compare = Comparison(dtype)
    try:
        for variant in variants:
            torch.manual_seed(0)
            # The reference runs on CPU in fp32 (the op's PyTorch path: exact, on any machine).
            reference = TinyLM(tiny_config(variant, n_layers=1)).eval()
            baseline = copy.deepcopy(reference).to(target, dtype)  # unsharded, same precision (FlashAttention's rule)
            sharded = shard_model(copy.deepcopy(reference).to(target, dtype), mesh)
            kind = reference.config.attention.kind
            for model in (reference, baseline, sharded):
                model.setup_cache(BATCH, CAPACITY)
            prompt = torch.randint(0, 257, (BATCH, PROMPT), generator=torch.Generator().manual_seed(1))
            steps = [torch.randint(0, 257, (BATCH, 1), generator=torch.Generator().manual_seed(10 + s))
                     for s in range(STEPS)]

            def decode_all(model, decode, where=target):
                lengths = torch.full((BATCH,), PROMPT, dtype=torch.int32, device=where)
                outputs = [model.prefill(prompt.to(where)).cpu()]
                for index, tokens in enumerate(steps):
                    lengths = lengths + 1
                    outputs.append(decode(tokens.to(where), lengths).cpu())
                    if index == 0:
                        torch.compiler.set_stance("fail_on_recompile")  # later steps must reuse the graph
                torch.compiler.set_stance("default")
                return outputs

            expected = decode_all(reference, reference.decode, torch.device("cpu"))
            unsharded = decode_all(baseline, baseline.decode)
            eager = decode_all(sharded, sharded.decode)
            errors = {"eager": max(compare.check(a, e, b, f"{variant} eager step {i}")
                                   for i, (a, e, b) in enumerate(zip(eager, expected, unsharded)))}
            full_slices = sharded_slices(reference.caches[0], sharded.caches[0], kind, rank, world)
            baseline_slices = sharded_slices(baseline.caches[0], sharded.caches[0], kind, rank, world)
            for (full, local), (same_precision, _) in zip(full_slices, baseline_slices):
                compare.check(local.cpu(), full, same_precision.cpu(), f"{variant} cache")

            errors["attention"] = check_attention_alone(reference, target, dtype, mesh, compare, variant)

            install_plain_decode(sharded)
            mark_caches_static(sharded)
            full_backend = on_gpu or kind == FULL_BACKEND_KIND_ON_CPU
            step, records = compiled_decode(sharded.decode, full_backend, on_gpu)
            for cache in sharded.caches:
                cache.fill_(0.0)
            compiled = decode_all(sharded, step)
            errors["gla" if full_backend else "pass"] = max(
                compare.check(a, e, b, f"{variant} compiled step {i}")
                for i, (a, e, b) in enumerate(zip(compiled, expected, unsharded)))
            rewritten = [r for r in records() if r.status == "rewritten"]
            local = sharded.layers[0].attention.config
            assert len(rewritten) == 1, [(r.status, r.reason) for r in records()]
            assert (rewritten[0].spec.num_q_heads, rewritten[0].spec.num_kv_heads) == (
                local.n_heads, local.cache_spec().num_kv_heads), rewritten[0].spec
            results.put(dict(rank=rank, variant=variant, kind=kind, errors=errors,
                             cache_bytes=cache_bytes_per_device(sharded.caches),
                             reference_cache_bytes=cache_bytes_per_device(reference.caches) * dtype.itemsize // 4,
                             local_heads=local.n_heads, spec=str(rewritten[0].spec)))
    finally:
        faulthandler.cancel_dump_traceback_later()
        torch._dynamo.reset()
        dist.destroy_process_group()

"""The gla backend on a CUDA GPU (run with `pytest -m gpu tests/test_backend*.py` on an H100/H200): SDPA
decomposes to the CUDA kernels' ops (flash / efficient / cudnn), the op runs the generated Triton kernels,
and CUDA-graph mode captures and replays the decode step with the op inside."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import glacompiler
from glacompiler.compiler import cpp_wrapper_int_arrays
from glacompiler.demo import install_plain_decode, mark_caches_static
from glacompiler.models import TinyLM
from glacompiler.presets import tiny_config
from test_backend_patterns import CASES, S, sdpa_inputs
from test_backend_runtime import StaticCacheDecoder, decode_inputs
from test_backend_support import assert_waits_first, compile_and_count, triton_kernel_bodies

pytestmark = pytest.mark.gpu


def on_gpu(tensors, dtype=torch.bfloat16):
    return [t.to("cuda", dtype) if t.is_floating_point() else t.to("cuda") for t in tensors]


def check_fa_rule(ours, low_precision, reference):
    """FlashAttention's rule: our error against fp32 is at most twice eager's own error in the same precision,
    plus a small atol for the rounding of the output itself."""
    ours_error = (ours.float() - reference).abs().max().item()
    eager_error = (low_precision.float() - reference).abs().max().item()
    assert ours_error <= 2 * eager_error + 1e-2 * reference.abs().max().item(), (ours_error, eager_error)


@pytest.mark.parametrize("name", ["sdpa_enable_gqa", "sdpa_repeat_kv", "sdpa_bool_mask_and_scale", "hf_eager_additive",
                                  "gta_cat", "gta_sdpa", "mla_absorbed", "gla_grouped", "sdpa_is_causal_multi_token"])
def test_variants_on_gpu_bf16(cuda_device, name):
    fn, make_inputs, kind, *_ = CASES[name]
    torch.manual_seed(0)
    inputs = make_inputs()
    gpu_inputs = on_gpu(inputs)
    output, counts, records = compile_and_count(fn, *gpu_inputs)
    assert [r.status for r in records] == ["rewritten"], [str(r) for r in records]
    assert records[0].kind == kind and counts[0]["gla"] == 1 and counts[0]["sdpa"] == 0
    if kind not in ("mla", "gla"):  # the portable kernels: Inductor launches them (rewrite/graph_launches.py)
        assert counts[0]["gla_launched_in_graph"] == 1
    with torch.no_grad():
        reference = fn(*on_gpu(inputs, torch.float32)).float()
        check_fa_rule(output, fn(*gpu_inputs), reference)


def test_cpp_wrapper_of_a_gpu_graph_is_built_minimally(cuda_device, monkeypatch):
    """The C++ wrapper of a CUDA graph is glue: it and its precompiled header are built with minimal optimisation
    and no vector ISA (torch 2.13 on does it itself; on older torch the backend asks for it,
    compiler/glue_wrapper_build.py). From empty caches, every C++ build option made for the GPU is a minimal one
    without an ISA, the host's ISAs are never listed (which probes them) during the compile nor probed ahead by
    the backend, and the graph gives the right result."""
    from torch._inductor import cpp_builder, cpu_vec_isa
    from torch._inductor.utils import fresh_inductor_cache

    from glacompiler.compiler import torch_compile_backend

    made, listings, pre_probes = [], [], []
    original = cpp_builder.CppTorchDeviceOptions.__init__
    list_isas = cpu_vec_isa.valid_vec_isa_list
    probe = torch_compile_backend.probe_isas_concurrently

    def recording(self, *args, **kwargs):
        made.append((str(kwargs.get("device_type", "cpu")), bool(kwargs.get("compile_only", False)),
                     bool(kwargs.get("min_optimize", False)), kwargs.get("vec_isa") is cpu_vec_isa.invalid_vec_isa))
        original(self, *args, **kwargs)

    def recording_listing():  # what torch's pick_vec_isa calls, and which probes each ISA the first time
        listings.append(1)
        return list_isas()

    def recording_probe(patches, builds_cpu_code, wrapper_picks_isa=True):
        pre_probes.append((builds_cpu_code, wrapper_picks_isa))
        probe(patches, builds_cpu_code, wrapper_picks_isa)

    monkeypatch.setattr(cpp_builder.CppTorchDeviceOptions, "__init__", recording)
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", recording_listing)
    monkeypatch.setattr(torch_compile_backend, "probe_isas_concurrently", recording_probe)
    fn, make_inputs, _, *_ = CASES["sdpa_enable_gqa"]
    torch.manual_seed(0)
    inputs = make_inputs()
    with fresh_inductor_cache():
        output, _, records = compile_and_count(fn, *on_gpu(inputs))
    # The wrapper's library and its precompiled header; load_async also makes a compile-only option for CPU
    # kernels (built at -O3, linked beside the glue), used only where the graph has some: this one has none.
    gpu_builds = [(minimal, no_isa) for device, compile_only, minimal, no_isa in made
                  if device.startswith("cuda") and not compile_only]
    assert gpu_builds and all(minimal and no_isa for minimal, no_isa in gpu_builds), made
    assert listings == []
    assert pre_probes and all(p == (False, False) for p in pre_probes), pre_probes
    assert [r.status for r in records] == ["rewritten"]
    with torch.no_grad():
        check_fa_rule(output, fn(*on_gpu(inputs)), fn(*on_gpu(inputs, torch.float32)).float())


def test_sdpa_with_dropout_keeps_fused_kernel(cuda_device):
    q, k, v = on_gpu(sdpa_inputs())
    _, counts, records = compile_and_count(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, enable_gqa=True), q, k, v)
    assert [r.status for r in records] == ["skipped"] and "dropout" in records[0].reason
    assert counts[0]["gla"] == 0


def test_cudagraphs_capture_and_replay_the_decode_step(cuda_device):
    from torch._inductor import cudagraph_trees

    steps = 8
    compiled_model = StaticCacheDecoder(S).to("cuda", torch.bfloat16)
    eager_model = StaticCacheDecoder(S).to("cuda", torch.bfloat16)
    torch._dynamo.mark_static_address(compiled_model.k_cache)
    torch._dynamo.mark_static_address(compiled_model.v_cache)
    torch._dynamo.reset()
    glacompiler.reset_report()
    counters.clear()
    step = torch.compile(compiled_model, backend=glacompiler.backend(cudagraphs=True))
    with torch.no_grad():
        for position in range(steps):
            args = on_gpu(decode_inputs(position)) + [torch.tensor([position], device="cuda")]
            torch.compiler.cudagraph_mark_step_begin()
            out = step(*args)
            expected = eager_model(*args)
            torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    assert [r.status for r in glacompiler.compile_report()] == ["rewritten"]
    assert counters["inductor"]["cudagraph_skips"] == 0
    manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert manager is not None and manager.path_state.name == "EXECUTION"  # replaying a recorded graph
    torch.testing.assert_close(compiled_model.k_cache.float(), eager_model.k_cache.float())


def decode_plain_against_fused(variant: str, backend, cudagraphs: bool) -> list:
    """The tiny model of a variant in bf16: plain-PyTorch decode compiled with backend, 6 steps after a prompt,
    each step's logits against the package's fused-op decode in eager. Returns the code Inductor generated."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    plain = install_plain_decode(TinyLM(tiny_config(variant)).eval().to("cuda", torch.bfloat16))
    torch.manual_seed(0)
    fused = TinyLM(tiny_config(variant)).eval().to("cuda", torch.bfloat16)
    for model in (plain, fused):
        model.setup_cache(4, 64)
    mark_caches_static(plain)
    prompt = torch.randint(0, 257, (4, 20), device="cuda")
    torch._dynamo.reset()
    glacompiler.reset_report()
    decode = torch.compile(plain.decode, backend=backend)
    plain.prefill(prompt)
    fused.prefill(prompt)
    lengths = torch.full((4,), 20, dtype=torch.int32, device="cuda")
    codes = []
    for step in range(6):
        lengths = lengths + 1
        tokens = torch.randint(0, 257, (4, 1), device="cuda", generator=torch.Generator("cuda").manual_seed(step))
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        if step == 0:
            ours, codes = run_and_get_code(decode, tokens, lengths)
            ours = ours.float()
        else:
            ours = decode(tokens, lengths).float()
        theirs = fused.decode(tokens, lengths).float()
        torch.testing.assert_close(ours, theirs, rtol=5e-2, atol=5e-2 * theirs.abs().max().item())
    return codes


def test_gla2_model_decode_with_cudagraphs(cuda_device):
    """The demo's model in bf16: plain-PyTorch decode under gla with CUDA graphs, against the package's
    fused-op decode in eager."""
    decode_plain_against_fused("gla-2", glacompiler.backend(cudagraphs=True), cudagraphs=True)
    records = glacompiler.compile_report()
    assert [r.status for r in records] == ["rewritten"] * 2 and {r.kind for r in records} == {"gla"}
    assert records[0].spec.dtype == "bfloat16"


def assert_dependents_wait_first(code: str, launches_early: bool) -> None:
    """Every Inductor Triton kernel in Inductor's generated (Python wrapper) code waits first where kernels launch
    as programmatic dependents, and none waits otherwise."""
    bodies = triton_kernel_bodies(code)
    assert bodies
    for name, body in bodies.items():
        if launches_early:
            assert_waits_first(name, body)
        else:
            assert "gdc_wait()" not in body, name


@pytest.mark.parametrize("variant", ["gqa-4", "gta-4", "gla-2"])
@pytest.mark.parametrize("programmatic", [True, False])
def test_replayed_steps_with_programmatic_launches(cuda_device, variant, programmatic):
    """By default Inductor's kernels of the replayed step launch as programmatic dependents (sm_90 and later),
    each waiting before it touches memory; with inductor_config={"triton.enable_pdl": False} they do not. Either
    way every replayed step matches the fused-op decode in eager."""
    from torch._inductor.utils import fresh_inductor_cache

    config = {} if programmatic else {"triton.enable_pdl": False}
    with fresh_inductor_cache():  # (the code is read as Inductor generates it)
        codes = decode_plain_against_fused(variant, glacompiler.backend(cudagraphs=True, inductor_config=config),
                                           cudagraphs=True)
    records = glacompiler.compile_report()
    assert records and all(r.status == "rewritten" for r in records)
    assert_dependents_wait_first("\n".join(codes), programmatic and torch.cuda.get_device_capability()[0] >= 9)


def test_programmatic_launches_replay_exactly(cuda_device):
    """A kernel that lets its dependents start after its loads and stores late (a long chain of sines), a fill,
    and a kernel reading the first's output elsewhere (flip), replayed under gla with fresh inputs: every kernel
    waits first (Inductor alone lets the sine chain load before it waits), and the flip matches the chain bit for
    bit every time. (Inductor schedules the fill first here, so this graph had no race even without the waits:
    benchmarks/logs/programmatic_launch_wait_first_h200.txt.)"""
    from torch._inductor.utils import fresh_inductor_cache, run_and_get_code

    def late_store_fill_flip(x):
        a = x
        for _ in range(96):
            a = torch.sin(a) * 1.0001 + 0.25
        return a, torch.full((4096,), 3.0, device=x.device), a.flip(0) * 2

    torch._dynamo.reset()
    compiled = torch.compile(late_store_fill_flip, backend=glacompiler.backend(cudagraphs=True))
    inputs = [torch.randn(1 << 20, device="cuda", generator=torch.Generator("cuda").manual_seed(i)) for i in range(8)]
    with fresh_inductor_cache():
        _, codes = run_and_get_code(compiled, inputs[0])
    assert_dependents_wait_first("\n".join(codes), torch.cuda.get_device_capability()[0] >= 9)
    for step in range(200):
        torch.compiler.cudagraph_mark_step_begin()
        a, b, c = compiled(inputs[step % len(inputs)])
        assert torch.equal(c, a.flip(0) * 2) and bool((b == 3).all()), step


def test_programmatic_launches_in_a_training_step(cuda_device):
    """A training step under gla with CUDA graphs: the backward graph, which AOTAutograd compiles lazily at the
    first backward, waits first too, and the gradients match eager's."""
    from torch._inductor.utils import fresh_inductor_cache, run_and_get_code

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.LayerNorm(256),
                                torch.nn.Linear(256, 8)).cuda()
    inputs = torch.randn(32, 64, device="cuda")
    model(inputs).square().mean().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=glacompiler.backend(cudagraphs=True))

    def step():
        compiled(inputs).square().mean().backward()

    with fresh_inductor_cache():
        _, codes = run_and_get_code(step)
    assert len(codes) == 2  # forward and backward
    assert_dependents_wait_first("\n".join(codes), torch.cuda.get_device_capability()[0] >= 9)
    for parameter, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-4, atol=1e-5)


def test_static_cache_decode_compiles_once_on_gpu(cuda_device):
    calls = []
    inner = glacompiler.backend()

    def counting(gm, example_inputs):
        calls.append(1)
        return inner(gm, example_inputs)

    model = StaticCacheDecoder(S).to("cuda", torch.bfloat16)
    torch._dynamo.reset()
    step = torch.compile(model, backend=counting)
    with torch.no_grad():
        for position in range(S):
            step(*on_gpu(decode_inputs(position)), torch.tensor([position], device="cuda"))
    assert len(calls) == 1


def test_autotune_tunes_the_rewritten_site_into_the_user_cache(cuda_device, tmp_path, monkeypatch):
    """backend(autotune=True): the first compile tunes the site's real shape bucket (small budget) and
    writes it to the user cache, where the runtime lookup then finds it."""
    pytest.importorskip("optuna")
    from glacompiler.kernels import family_for_spec
    from glacompiler.spec import ProblemShape
    from glacompiler.tables import clear_lookup_caches, tuned_config
    from glacompiler.tables.table_file import user_table_path

    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path))
    clear_lookup_caches()
    q, k, v = on_gpu(sdpa_inputs())
    torch._dynamo.reset()
    glacompiler.reset_report()
    compiled = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                             backend=glacompiler.backend(autotune=True))
    with torch.no_grad():
        out = compiled(q, k, v)
    records = glacompiler.compile_report()
    assert [r.status for r in records] == ["rewritten"]
    assert user_table_path(torch.cuda.get_device_name()).exists()
    shape = ProblemShape(batch=q.shape[0], query_len=q.shape[2], capacity=k.shape[2], page_size=0)
    family = family_for_spec(records[0].spec, shape, q.device)
    assert tuned_config(family, records[0].spec, shape, q.device) is not None
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, k, v, enable_gqa=True).float(),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("variant", ["gla-2", "gta-4", "gqa-4"])
def test_cache_write_stays_in_place(cuda_device, variant):
    """The decode step writes the new tokens into the static caches in place and hands the caches to the op
    as they are: Inductor's code allocates no buffer of a cache's shape. (Before torch 2.13, Inductor copies
    the whole cache twice per step when the write goes through a view of it; on torch 2.11 that was 0.7 ms
    per layer at batch 64 x 8192.)"""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = install_plain_decode(TinyLM(tiny_config(variant)).eval().to("cuda", torch.bfloat16))
    model.setup_cache(3, 96)  # shapes that appear nowhere else in the step
    mark_caches_static(model)
    torch._dynamo.reset()
    # The Python wrapper, whose allocations this reads as text; the C++ wrapper allocates the same buffers.
    decode = torch.compile(model.decode, backend=glacompiler.backend(cpp_wrapper=False))
    tokens = torch.randint(0, model.config.vocab_size, (3, 1), device="cuda")
    lengths = torch.full((3,), 40, dtype=torch.int32, device="cuda")
    with torch.no_grad():
        _, codes = run_and_get_code(decode, tokens, lengths)
    allocations = [line for code in codes for line in code.splitlines() if "empty_strided" in line]
    cache_shapes = {tuple(t.shape) for cache in model.caches for t in cache.tensors()}
    copies = [line.strip() for line in allocations if any(str(shape) in line for shape in cache_shapes)]
    assert allocations and not copies, copies


@pytest.mark.parametrize("variant", ["gla-2", "gta-4"])
def test_model_decode_with_the_cpp_wrapper(cuda_device, variant):
    """Without CUDA graphs the backend compiles with Inductor's C++ wrapper (the op is then called from C++
    through the dispatcher): plain-PyTorch decode against the package's fused-op decode in eager."""
    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu

    backend = glacompiler.backend()
    assert backend.config_patches([torch.empty(1, device="cuda")])["cpp_wrapper"] is True
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_plain_against_fused(variant, backend, cudagraphs=False)
    records = glacompiler.compile_report()
    assert records and all(r.status == "rewritten" for r in records)
    # Every graph built with the C++ wrapper: none fell back to the Python one (torch 2.11's int-array cache made
    # that happen now and then: cpp_wrapper_int_arrays.py).
    assert not [str(w.message) for w in caught if "C++ wrapper failed" in str(w.message)]
    assert cpp_wrapper_int_arrays.replaced() or not cpp_wrapper_int_arrays.keys_on_bound_method_id(
        CppWrapperCpu.codegen_int_array_var)


@pytest.mark.parametrize("variant", ["gqa-4", "gta-4", "gla-2"])
def test_plain_decode_masks_reach_the_op_as_lengths_on_gpu(cuda_device, variant):
    """Plain-PyTorch decode masks the keys past each length: every site takes them as lengths (one launch, no
    mask), and the bf16 step meets FlashAttention's rule against the fp32 step, over lengths from 1 to full."""
    models = {}
    for name, dtype in (("fp32", torch.float32), ("bf16 eager", torch.bfloat16), ("bf16 gla", torch.bfloat16)):
        torch.manual_seed(0)
        model = install_plain_decode(TinyLM(tiny_config(variant)).eval().to("cuda", dtype))
        model.setup_cache(4, 64)
        torch.manual_seed(1)
        for cache in model.caches:
            for tensor in cache.tensors():
                tensor.copy_(torch.randn(tensor.shape, device="cuda"))
        models[name] = model
    mark_caches_static(models["bf16 gla"])
    tokens = torch.randint(0, 257, (4, 1), device="cuda")
    lengths = torch.tensor([1, 64, 23, 40], dtype=torch.int32, device="cuda")
    torch._dynamo.reset()
    before = counters["glacompiler"]["masks_as_lengths"]
    with torch.no_grad():
        ours = torch.compile(models["bf16 gla"].decode, backend=glacompiler.backend())(tokens, lengths)
        low_precision = models["bf16 eager"].decode(tokens, lengths)
        reference = models["fp32"].decode(tokens, lengths).float()
    assert counters["glacompiler"]["masks_as_lengths"] - before == len(models["fp32"].layers)
    check_fa_rule(ours, low_precision, reference)

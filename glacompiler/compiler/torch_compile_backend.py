"""The torch.compile backend: GlaBackend runs Inductor's compile_fx with our pass (graph_pass.py) installed as
joint_custom_pre_pass and Inductor's own attention fusion held off (inductor_guard.py). Loading this module
registers the name "gla" with dynamo.

GLACOMPILER_STRICT=1 raises errors that the backend would otherwise absorb: a failure inside the pass (by
default the graph is recompiled without rewrites, with a warning) and a failure of online tuning."""
from __future__ import annotations

import itertools
import logging
import re
import warnings
from typing import Optional

import torch
from torch._inductor.compile_fx import compile_fx

from torch._dynamo.utils import counters

from .frozen_projections import with_frozen_projection_passes
from .graph_pass import AttentionRewritePass, GlaPassError, strict_mode
from .cpp_wrapper_int_arrays import install as declare_int_arrays_per_buffer
from .glue_wrapper_build import install as build_gpu_glue_minimally, wrapper_picks_isa
from .inductor_guard import compile_inner_under_gla, inductor_attention_fusion_disabled
from .rewrite.graph_launches import LATENT_ROWS_IN_GRAPH
from .isa_probe_memo import install as remember_isa_probes, probe_isas_concurrently
from .kernel_analysis_memo import install as memoize_kernel_analysis
from .parallel_launcher_builds import install as build_launcher_stubs_concurrently
from .programmatic_launch import PROGRAMMATIC_LAUNCH, install as wait_first_under_pdl, left_to_us as pdl_left_to_us
from .record_store import graph_records_key, load_records, save_records
from .report import add_records, discard_records
from .wrapper_header_prewarm import start as prewarm_wrapper_header

_graph_ids = itertools.count()
COMBO_KERNELS = "combo_kernels"  # Inductor's setting: horizontally independent kernels launched as one
CUDA_DEFAULTS = (PROGRAMMATIC_LAUNCH, COMBO_KERNELS)  # what config_patches turns on on CUDA (PDL for replayed steps)
LOGGER = logging.getLogger("glacompiler")


def _error_chain(error: BaseException):
    """The error and its causes / contexts, each once."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_cpp_compile_error(error: BaseException) -> bool:
    """A C++ compile failure of Inductor's output (its CppCompileError, possibly inside an InductorError)."""
    return any(type(e).__name__ == "CppCompileError" or "CppCompileError" in str(e)[:200] for e in _error_chain(error))


# Where Inductor's code for a default of ours lives: an error raised there is that default's (its frames' files).
# Only errors raised in that code are known to be the default's: a combo kernel that fails elsewhere (the scheduler,
# simd.py, a compile worker's SubprocException) still goes to the op-call retry first.
RAISED_IN = {COMBO_KERNELS: ("triton_combo_kernel",)}


def _raised_in_code_of(error: BaseException, setting: str) -> bool:
    """Whether a frame of the error's traceback (or of a cause's) runs Inductor's code for `setting`."""
    fragments = RAISED_IN.get(setting, ())
    for link in _error_chain(error):
        trace = link.__traceback__
        while trace is not None:
            if any(fragment in trace.tb_frame.f_code.co_filename for fragment in fragments):
                return True
            trace = trace.tb_next
    return False


# A compiler's diagnostic line: "file:line[:column]: [fatal ]error: ..." (gcc and clang). Not any line that says
# "error": Inductor's wrapper quotes AOTI_TORCH_ERROR_CODE_CHECK in the source lines a warning shows.
_COMPILER_ERROR_LINE = re.compile(r":\d+(?::\d+)?: (?:fatal )?error: ")


def cpp_compile_diagnostic(error: BaseException) -> str:
    """The compiler's first error line of a C++ compile failure (CppCompileError keeps the compiler's output), so
    that the fallback's warning says what failed; else the output's first line with "error:", else the error's
    first line."""
    for link in _error_chain(error):
        output = getattr(link, "output", None)
        if type(link).__name__ == "CppCompileError" and isinstance(output, str):
            lines = output.splitlines()
            found = next((line for line in lines if _COMPILER_ERROR_LINE.search(line)), None) or \
                next((line for line in lines if "error:" in line), None)
            if found is not None:
                return found.strip()[:300]
    return error_summary(error)


def error_summary(error: BaseException) -> str:
    """The error's first non-empty line (at most 200 characters), or its type's name where it has none."""
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return first[:200] or type(error).__name__


def _compile_fx(gm, example_inputs, patches: dict):
    """Inductor's compile_fx, its inner compiles (a lazily compiled backward graph's too) inside the gla flag."""
    return compile_fx(gm, example_inputs, config_patches=patches, inner_compile=compile_inner_under_gla)


def _accelerator_type(example_inputs) -> str:
    """The device type of a graph's tensor inputs, all on one accelerator ("cuda" where there are none)."""
    return next((t.device.type for t in example_inputs if isinstance(t, torch.Tensor)), "cuda")


def _caused_by_pass(error: BaseException) -> bool:
    return any(isinstance(e, GlaPassError) for e in _error_chain(error))


def tune_sites(targets: list, latent_rows_in_graph: int) -> None:
    """Online tuning of rewritten sites (latent ones the graph launches on the portable kernels for those too); a
    failure to tune never fails the user's compile."""
    from ..tuning import tune_for_shapes

    try:
        for device in {device for _, _, device in targets}:
            tune_for_shapes([(spec, shape) for spec, shape, d in targets if d == device], device=device,
                            latent_rows_in_graph=latent_rows_in_graph)
    except Exception as error:  # no optuna, no GPU time, ...: keep the heuristic and tables
        if strict_mode():
            raise
        warnings.warn(f"glacompiler: online tuning skipped ({error!r})", RuntimeWarning, stacklevel=3)


class GlaBackend:
    """torch.compile backend: rewrite attention sites to glacompiler's op, compile the rest with Inductor.

    cudagraphs: capture with Inductor's CUDA-graph trees (what mode="reduce-overhead" does), with Inductor's
        kernels launched as programmatic dependents on CUDA, each waiting first (programmatic_launch.py; Inductor's
        triton.enable_pdl, unless inductor_config or the environment, TORCHINDUCTOR_ENABLE_PDL, chose a value).
    autotune: at first compile, tune our kernels for the rewritten sites' real shapes (a small Optuna budget
        per site, results in the user config cache; CUDA only, needs optuna) and use Inductor's
        max-autotune for the rest of the model.
    rewrite: False compiles with the same settings and guard but leaves attention to Inductor (a baseline).
    cpp_wrapper: Inductor's C++ wrapper, which launches the graph's kernels from C++ instead of Python. None
        (the default) turns it on for CUDA graphs without CUDA-graph capture: a decode step is then bound by
        the host's launch work, and the C++ wrapper cuts it (benchmarks/RESULTS.md). Not needed when
        graphs replay the step, and left off on CPU, where it only adds C++ compile time. Its cost is at the
        first compile (a C++ compile per graph, plus Inductor's precompiled header the first time a cache dir
        sees it: ~35 s on a 2-core CPU for a one-op graph); the built library is cached with the graph, so
        a second process loads it (benchmarks/compile_time.py measures both). A process that builds C++ which may
        hold CPU code picks the host's ISA by probing (45 s of a 55 s warm start on the H200 machine's host,
        torch 2.11): the backend runs the probes concurrently and remembers passing ones across processes
        (isa_probe_memo.py). A CUDA graph's wrapper is glue, built at -O1 and without the ISA
        (glue_wrapper_build.py), as torch 2.13 builds it.
    inductor_config: extra Inductor config patches (they win over the options above). Not freezing: Dynamo keeps the
        parameters as module attributes, which Inductor's freezing makes constants, only where
        torch._inductor.config.freezing is on (under no_grad) when it traces (the backend warns). Where it is,
        projections of one input are fused into one GEMM (concat_projections.py) and GEMMs over weights of odd
        widths padded to aligned ones (align_projections.py).
    graph_launches: where a site's kernels are plain Triton (the portable family: GQA, MHA, GTA, and MLA/GLA
        off Hopper), Inductor launches them from its own wrapper instead of calling the op
        (rewrite/graph_launches.py): a few us of host time a site instead of about 40. A site of the Hopper
        latent kernel (Gluon, which Inductor cannot launch) gets its buffers, mask range and split combine from
        the graph and calls glacompiler::attention_into for the kernel alone (op/into_buffers.py). None (the
        default) turns it on except with autotune, whose tuning runs after the compile and must reach the sites
        through the op. If Inductor fails on such a graph it is compiled again with op calls, with a warning.
    latent_in_graph: with graph_launches and without CUDA graphs, MLA/GLA sites that the Hopper latent kernel
        would run (Gluon, which Inductor cannot launch: Python launches it) take the portable kernels, launched by
        Inductor, where they have at most 16 query rows per latent head and address at most 1 GiB of cache
        (batch x capacity): more device time for much less host time (rewrite/graph_launches.py). None (the
        default) turns it on wherever it applies; True warns where it cannot. On an H200 a DeepSeek-V3-shaped
        step took 1.184 ms with it against 1.475 ms with op calls, 1.240 against 1.624 ms of host time to enqueue
        (15 interleaved rounds of benchmarks/bench_hf.py's gla against gla-latent-op-calls; benchmarks/RESULTS.md).

    On CUDA, with or without graphs, Inductor's combo kernels are on (combo_kernels: independent kernels launched
    as one) unless inductor_config sets it. A graph Inductor fails to compile with a default of ours (the C++
    wrapper, PDL, combo kernels) is compiled again without it, with a warning, one default at a time."""

    def __init__(self, cudagraphs: bool = False, autotune: bool = False, rewrite: bool = True,
                 inductor_config: Optional[dict] = None, cpp_wrapper: Optional[bool] = None,
                 graph_launches: Optional[bool] = None, latent_in_graph: Optional[bool] = None):
        self.cudagraphs = cudagraphs
        self.autotune = autotune
        self.rewrite = rewrite
        self.cpp_wrapper = cpp_wrapper
        self.inductor_config = dict(inductor_config or {})
        self.graph_launches = (not autotune) if graph_launches is None else graph_launches
        self.latent_in_graph = True if latent_in_graph is None else bool(latent_in_graph)
        self._warned_freezing = False
        if latent_in_graph and (cudagraphs or not self.graph_launches):
            warnings.warn("glacompiler: latent_in_graph takes effect only with graph_launches and without CUDA "
                          "graphs; it is ignored here", RuntimeWarning, stacklevel=3)
        if autotune and self.graph_launches:
            warnings.warn("glacompiler: with graph_launches=True the sites Inductor launches keep the configs they "
                          "were compiled with; autotune's results reach them at the next compile", RuntimeWarning,
                          stacklevel=3)

    def config_patches(self, example_inputs=()) -> dict:
        from torch._inductor import list_mode_options

        if self.autotune:
            mode = "max-autotune" if self.cudagraphs else "max-autotune-no-cudagraphs"
        else:
            mode = "reduce-overhead" if self.cudagraphs else "default"
        patches = dict(list_mode_options(mode))
        on_cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs)
        cpp_wrapper = (on_cuda and not self.cudagraphs) if self.cpp_wrapper is None else self.cpp_wrapper
        if cpp_wrapper:
            patches["cpp_wrapper"] = True
        patches.update(self.inductor_config)
        if not on_cuda:
            return patches
        # Our defaults on CUDA, where inductor_config has not set them (CUDA_DEFAULTS).
        if patches.get("triton.cudagraphs") and PROGRAMMATIC_LAUNCH not in self.inductor_config and pdl_left_to_us():
            # Inductor's kernels of a replayed step start before the kernel ahead of them has ended (sm_90 and
            # later; Inductor emits nothing elsewhere). Without graphs it gains nothing: the C++ wrapper launches
            # without the attribute, and the Python wrapper's static launcher refuses kernels that carry it.
            patches[PROGRAMMATIC_LAUNCH] = True
        if COMBO_KERNELS not in self.inductor_config and hasattr(torch._inductor.config, COMBO_KERNELS):
            # Independent kernels of a step (a layer's norms and casts, say) launched as one: fewer kernel
            # boundaries a step under graphs, fewer launches for the host without them (benchmarks/RESULTS.md).
            patches[COMBO_KERNELS] = True
        return patches

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        remember_isa_probes()  # before Inductor picks the host's ISA (isa_probe_memo.py)
        memoize_kernel_analysis()  # our launch nodes' TTIR, once per specialisation (kernel_analysis_memo.py)
        build_gpu_glue_minimally()  # a GPU graph's C++ wrapper at -O1 and without the host's ISA, as torch 2.13
        declare_int_arrays_per_buffer()  # torch 2.11's C++ wrapper's intermittent undeclared int_array_N
        wait_first_under_pdl()  # Inductor's kernels launched as programmatic dependents wait before any access
        build_launcher_stubs_concurrently()  # Triton's per-signature launcher stubs side by side, not in turn
        patches = with_frozen_projection_passes(self.config_patches(example_inputs))  # (a frozen graph's GEMMs)
        if (self.inductor_config.get("freezing") and not torch._inductor.config.freezing and not self._warned_freezing
                and not torch._dynamo.config.prepare_freezing):  # (that one keeps the parameters as attributes)
            self._warned_freezing = True
            warnings.warn("glacompiler: freezing in inductor_config reaches Inductor after Dynamo has made the "
                          "parameters graph inputs, so they are not frozen; set torch._inductor.config.freezing = "
                          "True before torch.compile traces", RuntimeWarning, stacklevel=2)
        # Where this graph builds C++ that needs the host's ISA, Inductor is about to probe it: let the probes
        # overlap. A CUDA graph's C++ wrapper is glue, built without one where glue_wrapper_build.py sees to it.
        picks_isa = wrapper_picks_isa(example_inputs)
        probe_isas_concurrently(patches, any(isinstance(t, torch.Tensor) and t.device.type == "cpu"
                                             for t in example_inputs), picks_isa)
        if not picks_isa:  # a GPU graph's glue wrapper: its precompiled header meanwhile
            prewarm_wrapper_header(patches, _accelerator_type(example_inputs))
        graph_name = f"graph {next(_graph_ids)}"
        while True:  # (each retry gives up one of our own choices: at most two retries)
            try:
                return self._compile_with_pass(gm, example_inputs, patches, graph_name)
            except Exception as error:
                if strict_mode():
                    raise
                patches = self._without_a_failed_choice(patches, error, graph_name)

    def _without_a_failed_choice(self, patches: dict, error: Exception, graph_name: str) -> dict:
        """patches less the setting of ours that the failure points at, with a warning; the error raised where
        none of the settings left is ours (the user's choices are theirs)."""
        if self._chose_cpp_wrapper(patches) and _is_cpp_compile_error(error):
            # Inductor's C++ wrapper does not compile every graph (torch 2.11: MoE's _grouped_mm); the wrapper
            # is our default, not the user's choice, so the graph is compiled with Inductor's Python wrapper.
            warnings.warn(f"glacompiler: Inductor's C++ wrapper failed to compile {graph_name}; compiling it "
                          f"with the Python wrapper ({cpp_compile_diagnostic(error)})", RuntimeWarning,
                          stacklevel=3)
            LOGGER.debug("%s: the C++ wrapper's compile error in full", graph_name, exc_info=error)
            return {**patches, "cpp_wrapper": False}
        chosen = self._default_choices(patches)
        if not chosen:
            raise error
        # PDL and combo kernels are our defaults on CUDA, not the user's choice: a graph Inductor fails to
        # compile with them is compiled as Inductor would by default.
        warnings.warn(f"glacompiler: Inductor failed on {graph_name} with {' and '.join(chosen)} on (the "
                      f"backend's defaults on CUDA); compiling it again without them "
                      f"({cpp_compile_diagnostic(error)})", RuntimeWarning, stacklevel=3)
        LOGGER.debug("%s: the error in full", graph_name, exc_info=error)
        return {name: value for name, value in patches.items() if name not in chosen}

    def _default_choices(self, patches: dict) -> tuple:
        """The settings in patches that the backend turned on itself on CUDA (not inductor_config's)."""
        return tuple(name for name in CUDA_DEFAULTS if patches.get(name) and name not in self.inductor_config)

    def _chose_cpp_wrapper(self, patches: dict) -> bool:
        return bool(patches.get("cpp_wrapper")) and self.cpp_wrapper is None and \
            "cpp_wrapper" not in self.inductor_config

    def _compile_with_pass(self, gm, example_inputs, patches: dict, graph_name: str,
                           graph_launches: Optional[bool] = None):
        user_pass = patches.get("joint_custom_pre_pass", torch._inductor.config.joint_custom_pre_pass)
        graph_launches = self.graph_launches if graph_launches is None else graph_launches
        replayed = patches.get("triton.cudagraphs", torch._inductor.config.triton.cudagraphs)  # (host work gone)
        latent_rows = LATENT_ROWS_IN_GRAPH if self.latent_in_graph and not replayed else 0
        our_pass = AttentionRewritePass(self.rewrite, chained=user_pass, graph_name=graph_name,
                                        graph_launches=graph_launches, latent_rows_in_graph=latent_rows)
        records_key = self._records_key(gm, example_inputs, our_pass, patches)
        with inductor_attention_fusion_disabled():
            try:
                compiled = self._compile(gm, example_inputs, {**patches, "joint_custom_pre_pass": our_pass},
                                         our_pass, records_key)
            except Exception as error:
                # A C++ compile error of the wrapper we chose, or an error in the code of another default of
                # ours (combo kernels), is __call__'s to retry without that default: our launches are not to blame.
                ours_to_retry = not (self._chose_cpp_wrapper(patches) and _is_cpp_compile_error(error)) and \
                    not any(_raised_in_code_of(error, name) for name in self._default_choices(patches))
                if our_pass.launched_in_graph and ours_to_retry and not _caused_by_pass(error) and not strict_mode():
                    # Our kernels as Inductor's own (a config that does not fit, an Inductor without support
                    # for something they use): the op launches them instead.
                    discard_records(our_pass.records)
                    warnings.warn(f"glacompiler: Inductor failed on {graph_name} with our kernels launched from "
                                  f"its wrapper ({error_summary(error)}); compiling it again with op calls",
                                  RuntimeWarning, stacklevel=2)
                    return self._compile_with_pass(gm, example_inputs, patches, graph_name, graph_launches=False)
                if not _caused_by_pass(error) or strict_mode():
                    discard_records(our_pass.records)  # the caller may compile this graph again
                    raise
                warnings.warn(
                    f"glacompiler: the attention pass failed on {graph_name} ({error!r}); compiling it without "
                    "rewrites (set GLACOMPILER_STRICT=1 to raise instead)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return _compile_fx(gm, example_inputs, self._without_our_programmatic_launch(patches))
        if self.autotune and our_pass.tuning_targets:
            tune_sites(our_pass.tuning_targets, our_pass.latent_rows_in_graph if our_pass.graph_launches else 0)
        return compiled

    def _without_our_programmatic_launch(self, patches: dict) -> dict:
        """patches less the PDL the backend chose itself: a graph compiled without our pass has no key of ours in
        Inductor's caches, which could then serve it a plain compile's kernels, made without the first waits."""
        if PROGRAMMATIC_LAUNCH not in self._default_choices(patches):
            return patches
        return {name: value for name, value in patches.items() if name != PROGRAMMATIC_LAUNCH}

    @staticmethod
    def _records_key(gm, example_inputs, our_pass: AttentionRewritePass, patches: dict) -> Optional[str]:
        """The key of the graph's records; "" when it cannot be made (an unhashable config value, ...): the
        graph is then compiled without the AOTAutograd cache, so the pass always runs and makes them."""
        try:
            return graph_records_key(gm, example_inputs, our_pass.uuid(), patches)
        except Exception as error:
            if strict_mode():
                raise
            warnings.warn(f"glacompiler: compiling without the AOTAutograd cache ({error!r})", RuntimeWarning,
                          stacklevel=3)
            return ""

    @staticmethod
    def _compile(gm, example_inputs, patches: dict, our_pass: AttentionRewritePass, records_key: Optional[str]):
        """compile_fx with our pass, keeping the report right when Inductor's caches serve the graph: records
        made by the pass are saved; on an AOTAutograd cache hit (the pass did not run) the saved ones are
        restored, and where none were saved the graph is compiled again without that cache (the FX-graph
        cache can still hit: on inference graphs our pass runs before its lookup)."""
        if records_key == "":
            with torch._functorch.config.patch(enable_autograd_cache=False):
                return _compile_fx(gm, example_inputs, patches)
        hits_before = counters["aot_autograd"]["autograd_cache_hit"]
        compiled = _compile_fx(gm, example_inputs, patches)
        if records_key is None:  # no uuid: Inductor's caches are bypassed and the pass always runs
            return compiled
        if our_pass.calls == 0 and counters["aot_autograd"]["autograd_cache_hit"] > hits_before:
            records = load_records(records_key, our_pass.graph_name)
            if records is not None:
                counters["glacompiler"]["records_restored_from_cache"] += 1
                add_records(records)
                our_pass.records.extend(records)
                return compiled
            counters["glacompiler"]["recompiled_for_records"] += 1
            with torch._functorch.config.patch(enable_autograd_cache=False):
                compiled = _compile_fx(gm, example_inputs, patches)
        if our_pass.calls:
            save_records(records_key, our_pass.records)
        return compiled

    def __repr__(self) -> str:
        return (f"GlaBackend(cudagraphs={self.cudagraphs}, autotune={self.autotune}, rewrite={self.rewrite}, "
                f"cpp_wrapper={self.cpp_wrapper}, inductor_config={self.inductor_config}, "
                f"graph_launches={self.graph_launches}, latent_in_graph={self.latent_in_graph})")


def backend(cudagraphs: bool = False, autotune: bool = False, rewrite: bool = True,
            inductor_config: Optional[dict] = None, cpp_wrapper: Optional[bool] = None,
            graph_launches: Optional[bool] = None, latent_in_graph: Optional[bool] = None) -> GlaBackend:
    """A gla backend with options: torch.compile(model, backend=glacompiler.backend(cudagraphs=True))."""
    return GlaBackend(cudagraphs=cudagraphs, autotune=autotune, rewrite=rewrite, inductor_config=inductor_config,
                      cpp_wrapper=cpp_wrapper, graph_launches=graph_launches, latent_in_graph=latent_in_graph)


gla_backend = GlaBackend()

BACKEND_NAME = "gla"


def register_gla_backend() -> None:
    """Register "gla" with dynamo, once. When torch found our entry point first and is importing us to load
    it, it registers the name itself right after; registering here too would be a duplicate."""
    from torch._dynamo.backends import registry

    if BACKEND_NAME in registry._COMPILER_FNS:
        return
    if registry._BACKENDS.get(BACKEND_NAME) is not None:
        return
    registry.register_backend(compiler_fn=gla_backend, name=BACKEND_NAME)


register_gla_backend()

"""glacompiler: fused decode attention for the MHA/GQA/MQA/GTA/MLA/GLA family, inside torch.compile.

`import glacompiler` loads the op (and no Inductor): attention_with_kvcache, its reference, AttentionSpec and
the kernel configs. The torch.compile backend and its report load on first use (glacompiler.backend(...),
compile_report(), or torch.compile(model, backend="gla"), which finds the backend through its entry point;
the backend and its graph pass live in glacompiler.compiler)."""
from __future__ import annotations

import importlib

from .kernels.common.split_workspace import release_split_workspaces, split_workspace_bytes
from .kernels.latent_hopper import LatentHopperConfig
from .kernels.portable import PortableConfig
from .op import attention_with_kvcache, attention_with_kvcache_config, mask_key_range
from .op.validation import set_debug_checks
from .reference import attention_with_kvcache_reference
from .spec import AttentionSpec, ProblemShape



def backend(cudagraphs: bool = False, autotune: bool = False, rewrite: bool = True, inductor_config=None,
            cpp_wrapper=None, graph_launches=None, latent_in_graph=None):
    """A gla torch.compile backend with options: torch.compile(model, backend=glacompiler.backend(cudagraphs=True)).
    See glacompiler.compiler.GlaBackend for the options; the plain name "gla" is this with the defaults."""
    from .compiler import backend as make_backend  # Inductor loads here, not at `import glacompiler`

    return make_backend(cudagraphs=cudagraphs, autotune=autotune, rewrite=rewrite, inductor_config=inductor_config,
                        cpp_wrapper=cpp_wrapper, graph_launches=graph_launches, latent_in_graph=latent_in_graph)


# name -> module that defines it, imported on first access (PEP 562).
_LAZY = {
    "compile_report": "glacompiler.compiler.report",
    "format_report": "glacompiler.compiler.report",
    "reset_report": "glacompiler.compiler.report",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'glacompiler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this hook
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "AttentionSpec",
    "LatentHopperConfig",
    "PortableConfig",
    "ProblemShape",
    "attention_with_kvcache",
    "attention_with_kvcache_config",
    "attention_with_kvcache_reference",
    "backend",
    "compile_report",
    "format_report",
    "mask_key_range",
    "release_split_workspaces",
    "reset_report",
    "set_debug_checks",
    "split_workspace_bytes",
]

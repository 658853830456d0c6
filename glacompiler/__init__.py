"""glacompiler: fused decode attention for the MHA/GQA/MQA/GTA/MLA/GLA family, inside torch.compile."""
from .config import KernelConfig, heuristic_config
from .ops import attention_with_kvcache, attention_with_kvcache_config
from .reference import attention_with_kvcache_reference
from .spec import AttentionSpec
from .backend import backend, compile_report, reset_report

__all__ = [
    "AttentionSpec",
    "KernelConfig",
    "attention_with_kvcache",
    "attention_with_kvcache_config",
    "attention_with_kvcache_reference",
    "backend",
    "compile_report",
    "heuristic_config",
    "reset_report",
]

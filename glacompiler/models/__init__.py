"""Reference attention modules of the family (GQA/MHA/MQA, GTA, MLA, GLA) with static-cache decode through
the fused op, and TinyLM, a small decoder-only model built from them. Named sizes (the paper's and a tiny
one): glacompiler.presets."""
from .cache import StaticKVCache
from .config import AttentionConfig, ModelConfig
from .gqa import GroupedQueryAttention
from .gta import GroupedTiedAttention
from .latent import LatentAttention
from .lm import DecoderLayer, TinyLM, build_attention

__all__ = [
    "AttentionConfig",
    "DecoderLayer",
    "GroupedQueryAttention",
    "GroupedTiedAttention",
    "LatentAttention",
    "ModelConfig",
    "StaticKVCache",
    "TinyLM",
    "build_attention",
]

"""Reference attention modules of the family (GQA/MHA/MQA, GTA, MLA, GLA) with static-cache decode through
the fused op, and TinyLM, a small decoder-only model built from them."""
from .cache import StaticKVCache
from .config import AttentionConfig, CacheLayout, ModelConfig
from .gqa import GroupedQueryAttention
from .gta import GroupedTiedAttention
from .latent import LatentAttention
from .lm import DecoderLayer, TinyLM, build_attention
from .presets import PAPER_SIZES, PAPER_VARIANTS, PAPER_VOCAB_SIZE, attention_config, paper_config, tiny_config

__all__ = [
    "AttentionConfig",
    "CacheLayout",
    "DecoderLayer",
    "GroupedQueryAttention",
    "GroupedTiedAttention",
    "LatentAttention",
    "ModelConfig",
    "PAPER_SIZES",
    "PAPER_VARIANTS",
    "PAPER_VOCAB_SIZE",
    "StaticKVCache",
    "TinyLM",
    "attention_config",
    "build_attention",
    "paper_config",
    "tiny_config",
]

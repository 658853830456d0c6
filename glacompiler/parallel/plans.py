"""Tensor-parallel plans for the package's models (glacompiler.models) over a 1-D DeviceMesh of N ranks.

Megatron's split, written as torch.distributed.tensor.parallel plans: every projection that makes query heads
(and the KV heads of GQA/GTA, the latent heads of GLA) is column-wise, the output projection row-wise (one
all-reduce), the MLP's gate/up column-wise and down row-wise (the second all-reduce). Per kind:

- GQA/MHA, GTA: query heads and KV heads split together (n_kv_heads divisible by N). GTA's one rope key is
  computed on every rank (its projection is replicated).
- MLA: query heads split; the latent down-projection, its norm and the latent cache are replicated (every rank
  reads the whole latent cache: the paper's point against MLA).
- GLA: latent heads split with their query groups (n_latent_heads divisible by N); each rank caches only its
  latent heads. The rope key is computed on every rank.

Every style returns plain local tensors (use_local_output), so the attention between the projections runs on
per-rank tensors: the fused op and torch.compile(backend="gla") see per-rank shapes. After sharding, each
attention module's `config` is its per-rank config (local head counts), so the model code and new_cache need
no change, and each rank's cache holds only its shard."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from ..models import AttentionConfig, DecoderLayer, TinyLM
from ..models.config import GROUPED_QUERY_KINDS
from ..models.base import CachedAttention
from ..spec import AttentionSpec


class HeadwiseParallel(ParallelStyle):
    """Every parameter of the module is indexed by head on dim 0 (MLA/GLA's per-head W_UK and W_UV, GLA's
    per-latent-head norm scale): each rank keeps its contiguous slice of heads as a plain local parameter, the
    same slice ColwiseParallel gives the projections that make those heads. The module's forward is unchanged
    and sees only its heads; no communication."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        for name, param in list(module.named_parameters(recurse=False)):
            if param.shape[0] % device_mesh.size() != 0:
                raise ValueError(f"{type(module).__name__}.{name}: {param.shape[0]} heads do not split over "
                                 f"{device_mesh.size()} ranks")
            shard = distribute_tensor(param.detach(), device_mesh, [Shard(0)], src_data_rank=self.src_data_rank)
            module.register_parameter(name, nn.Parameter(shard.to_local().clone(), requires_grad=param.requires_grad))
        return module


def local_attention_config(config: AttentionConfig, tp_size: int) -> AttentionConfig:
    """The sizes one of tp_size ranks holds; a ValueError when the heads cannot be split that way."""
    if tp_size < 1:
        raise ValueError(f"tp_size must be positive, got {tp_size}")
    if config.n_heads % tp_size:
        raise ValueError(f"{config.n_heads} query heads do not split over {tp_size} ranks")
    heads = dict(n_heads=config.n_heads // tp_size)
    if config.kind in GROUPED_QUERY_KINDS or config.kind == "gta":
        if config.n_kv_heads % tp_size:
            raise ValueError(f"{config.kind}: tensor parallelism splits KV heads; {config.n_kv_heads} KV heads do "
                             f"not split over {tp_size} ranks")
        heads["n_kv_heads"] = config.n_kv_heads // tp_size
    elif config.kind == "gla":
        if config.n_latent_heads % tp_size:
            raise ValueError(f"gla: tensor parallelism splits latent heads; {config.n_latent_heads} latent heads do "
                             f"not split over {tp_size} ranks")
        heads["n_latent_heads"] = config.n_latent_heads // tp_size
    return dataclasses.replace(config, **heads)  # mla: the one latent head stays whole on every rank


def local_spec(spec: AttentionSpec, tp_size: int) -> AttentionSpec:
    """The decode attention one of tp_size ranks runs for `spec`: its query heads and KV/latent heads, MLA's one
    latent whole (GLA-2 over 2 ranks: one latent head each, the shape of an MLA of that width)."""
    replicated = spec.kind == "mla"
    if spec.num_q_heads % tp_size or (not replicated and spec.num_kv_heads % tp_size):
        raise ValueError(f"{spec.key()}: heads do not split over {tp_size} ranks")
    kv_heads = spec.num_kv_heads if replicated else spec.num_kv_heads // tp_size
    return AttentionSpec.from_dims(spec.num_q_heads // tp_size, kv_heads, spec.head_dim_q, spec.head_dim_k,
                                   spec.head_dim_v, spec.rope_dim, spec.tied, spec.paged, spec.dtype)


def attention_plan(config: AttentionConfig) -> dict[str, ParallelStyle]:
    """parallelize_module plan for an attention module of this config (names relative to the module). Modules
    it leaves out are replicated: they hold the same full weights on every rank."""
    if config.kind in GROUPED_QUERY_KINDS:
        plan = {"q_proj": ColwiseParallel(), "k_proj": ColwiseParallel(), "v_proj": ColwiseParallel()}
    elif config.kind == "gta":
        plan = {"q_proj": ColwiseParallel(), "kv_proj": ColwiseParallel()}  # k_rope_proj: replicated
    else:
        query = "q_up" if config.q_latent_dim else "q_proj"  # q_down and q_norm: replicated
        plan = {query: ColwiseParallel(), "key_up": HeadwiseParallel(), "value_up": HeadwiseParallel()}
        if config.kind == "gla":
            plan.update(latent_down=ColwiseParallel(), latent_norm=HeadwiseParallel())
    plan["o_proj"] = RowwiseParallel()
    return plan


def decoder_layer_plan(config: AttentionConfig) -> dict[str, ParallelStyle]:
    """A pre-norm decoder layer: the attention plan and the Megatron MLP (two all-reduces per layer)."""
    plan = {f"attention.{name}": style for name, style in attention_plan(config).items()}
    plan.update({"mlp.gate": ColwiseParallel(), "mlp.up": ColwiseParallel(), "mlp.down": RowwiseParallel()})
    return plan


def replicate_from_first_rank(module: nn.Module, device_mesh) -> None:
    """Every rank starts from rank 0's weights: the replicated ones stay as they are, the sharded ones are cut
    from them (distribute_tensor's src_data_rank=0)."""
    group = device_mesh.get_group()
    source = torch.distributed.get_global_rank(group, 0)
    with torch.no_grad():
        for tensor in module.parameters():
            if not isinstance(tensor, DTensor):
                torch.distributed.broadcast(tensor.data, src=source, group=group)


def shard_attention(attention: CachedAttention, device_mesh) -> CachedAttention:
    """Shard one attention module in place (before its cache is made); its config becomes the per-rank one."""
    local = local_attention_config(attention.config, device_mesh.size())
    replicate_from_first_rank(attention, device_mesh)
    parallelize_module(attention, device_mesh, attention_plan(attention.config))
    attention.config = local
    return attention


def shard_decoder_layer(layer: DecoderLayer, device_mesh, *, replicate: bool = True) -> DecoderLayer:
    """Shard one decoder layer in place (replicate=False: its weights are already rank 0's on every rank)."""
    config = layer.attention.config
    local = local_attention_config(config, device_mesh.size())
    if layer.mlp.gate.out_features % device_mesh.size():
        raise ValueError(f"MLP width {layer.mlp.gate.out_features} does not split over {device_mesh.size()} ranks")
    if replicate:
        replicate_from_first_rank(layer, device_mesh)
    parallelize_module(layer, device_mesh, decoder_layer_plan(config))
    layer.attention.config = local
    return layer


def shard_model(model: TinyLM, device_mesh) -> TinyLM:
    """Shard every decoder layer of a TinyLM in place; embedding, final norm and lm head stay replicated. Call it
    before setup_cache: the caches are then made per rank."""
    if model.caches is not None:
        raise ValueError("shard_model needs a model without caches: call setup_cache after sharding")
    replicate_from_first_rank(model, device_mesh)
    for layer in model.layers:
        shard_decoder_layer(layer, device_mesh, replicate=False)
    return model


def cache_bytes_per_device(caches) -> int:
    """Bytes this rank's caches (StaticKVCache modules) occupy."""
    return sum(t.numel() * t.element_size() for cache in caches for t in cache.tensors())

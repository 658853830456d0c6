"""Tensor parallelism for the package's models with torch.distributed: a 1-D DeviceMesh over the ranks and
`parallelize_module` plans per attention kind (plans.py), and the process-group setup that keeps NVLink
multicast off (environment.py). Start the ranks with torchrun; see docs/scale_out.md."""
from .environment import NVLINK_MULTICAST_OFF, init_tensor_parallel, keep_nvlink_multicast_off
from .plans import (
    HeadwiseParallel,
    attention_plan,
    cache_bytes_per_device,
    decoder_layer_plan,
    local_attention_config,
    local_spec,
    shard_attention,
    shard_decoder_layer,
    shard_model,
)

__all__ = [
    "HeadwiseParallel",
    "NVLINK_MULTICAST_OFF",
    "attention_plan",
    "cache_bytes_per_device",
    "decoder_layer_plan",
    "init_tensor_parallel",
    "keep_nvlink_multicast_off",
    "local_attention_config",
    "local_spec",
    "shard_attention",
    "shard_decoder_layer",
    "shard_model",
]

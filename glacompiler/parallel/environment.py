"""Process-group and mesh setup for tensor parallelism, one process per device (torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

NVLink multicast (NVLS) stays off in every process: the shared H200 machines must not use it, and NCCL,
PyTorch's symmetric memory and NVSHMEM each have their own switch. The switches are read when those libraries
initialise, so they are set (setdefault: an explicit setting by the user wins) before the process group
exists, and they pass on to any process started from this one."""
from __future__ import annotations

import os
from typing import Optional

import torch

NVLINK_MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def keep_nvlink_multicast_off() -> None:
    """Set the three switches in os.environ unless the user set them already."""
    for name, value in NVLINK_MULTICAST_OFF.items():
        os.environ.setdefault(name, value)


def init_tensor_parallel(tp_size: Optional[int] = None, device: Optional[str] = None):
    """Join (or reuse) the default process group and return a 1-D DeviceMesh named "tp" over all ranks.

    device: "cuda" (NCCL, one GPU per rank chosen by LOCAL_RANK) or "cpu" (gloo); default cuda when a GPU is
    visible. tp_size, when given, must equal the number of ranks (the mesh is 1-D: tensor parallel only)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    keep_nvlink_multicast_off()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if tp_size is not None and tp_size != world_size:
        raise ValueError(f"tp_size {tp_size} must equal the number of processes ({world_size}); start them with "
                         f"torchrun --nproc-per-node {tp_size}")
    bound_device = None
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(local_rank)
        bound_device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29511"), ("RANK", "0"),
                            ("WORLD_SIZE", "1")):
            os.environ.setdefault(name, value)  # a lone process without torchrun
        # device_id: NCCL builds its communicator now, not lazily inside a later CUDA-graph capture.
        dist.init_process_group("nccl" if device == "cuda" else "gloo", device_id=bound_device)
    return init_device_mesh(device, (world_size,), mesh_dim_names=("tp",))

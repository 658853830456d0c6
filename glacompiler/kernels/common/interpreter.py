"""Whether the Triton interpreter runs the kernels (TRITON_INTERPRET=1): then CPU tensors go through the
generated kernels instead of PyTorch's CPU attention (op/cpu_attention.py)."""
import os


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

"""benchmarks/host_python_path.py: after each row's first call (the interpreter's), every launch of a repeat
reaches the stand-in C launcher, so its rows time the path a GPU's repeat takes."""
import pytest
import torch

import glacompiler
from glacompiler.kernels.common import mask_range
from glacompiler.memo import BoundedMemo
from glacompiler.op import prepared

from benchmark_scripts import load_benchmark_script


@pytest.fixture
def own_memos(monkeypatch):
    """Prepared calls and key-range launches of this test only: the launches it gets are stand-ins."""
    monkeypatch.setattr(prepared, "_prepared", BoundedMemo(1024))
    monkeypatch.setattr(prepared, "wrapper_calls", BoundedMemo(1024))
    monkeypatch.setattr(mask_range, "_prepared_ranges", BoundedMemo(256))


def test_each_repeat_launch_reaches_the_stand_in_launcher(interpret_kernels, own_memos, monkeypatch):
    from triton.runtime.driver import driver

    script = load_benchmark_script("host_python_path")
    launched = []
    monkeypatch.setattr(script, "_no_op_launcher", lambda *arguments: launched.append(arguments[3]))  # (the stream)
    monkeypatch.setattr(glacompiler.op, "_runs_directly", lambda q: True)
    monkeypatch.setattr(driver, "_active", script._StandInDriver())
    counts = {}
    with torch.no_grad():
        measured = script.rows(2)
        for _, fn in measured:  # (the wrapper's rows share the op's plans: theirs launch the stand-ins already)
            script._give_binaries(script._launch_arguments(fn))
        for name, fn in measured + measured:  # (the second round through each plan's shared binaries)
            launched.clear()
            fn()
            counts.setdefault(name, []).append(len(launched))
    # lengths: the attention kernel; a mask: its two passes, and the key range's reduction where not given; splits:
    # the attention kernel and the combine
    assert counts == {"op, lengths": [1, 1], "op, mask + kv_range (two passes)": [2, 2],
                      "op, mask (range reduced per call)": [3, 3], "wrapper, lengths": [1, 1],
                      "wrapper, mask": [3, 3], "wrapper, mask + kv_range": [2, 2],
                      "wrapper, lengths, 8 splits + combine": [2, 2]}

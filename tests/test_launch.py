"""The launcher's step-down to fewer pipeline stages when a config does not fit the GPU's shared memory."""
import logging

import pytest
from triton.runtime.errors import OutOfResources

from glacompiler import launch
from glacompiler.config import KernelConfig


class FakeKernel:
    """Stands in for a Triton kernel that needs more shared memory than the device has above max_stages."""

    def __init__(self, max_stages):
        self.max_stages = max_stages
        self.tried = []

    def __getitem__(self, grid):
        def run(*args, num_warps, num_stages, **constexprs):
            self.tried.append(num_stages)
            if num_stages > self.max_stages:
                raise OutOfResources(200_000 + num_stages, 232_448, "shared memory")
            return ("compiled", num_stages)
        return run


def test_steps_down_once_and_remembers(caplog):
    kernel = FakeKernel(max_stages=1)
    config = KernelConfig(num_stages=3)
    with caplog.at_level(logging.WARNING, logger="glacompiler"):
        first = launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": True}, config, "module_a")
        second = launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": True}, config, "module_a")
    assert first == second == ("compiled", 1)
    assert kernel.tried == [3, 2, 1, 1]  # the second launch goes straight to the depth that fits
    assert sum("does not fit" in r.message for r in caplog.records) == 2


def test_other_specialisations_keep_their_stages():
    kernel = FakeKernel(max_stages=3)
    config = KernelConfig(num_stages=3)
    assert launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": False}, config, "module_b") == ("compiled", 3)
    assert kernel.tried == [3]


def test_gives_up_at_one_stage():
    kernel = FakeKernel(max_stages=0)
    with pytest.raises(OutOfResources):
        launch._launch_fitting(kernel, (1,), (), {}, KernelConfig(num_stages=2), "module_c")
    assert kernel.tried == [2, 1]

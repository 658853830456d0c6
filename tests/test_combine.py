"""The LSE combine of split-KV partial outputs (kernels/common/combine.py), alone: ragged splits (some empty,
some with a single key's weight), rows whose every split is empty, several output widths, programs of one row and
of several; the kernel under the interpreter and on a GPU against the float64 reference beside it."""
import pytest
import torch

from glacompiler.kernels.common.combine import (combine_launch, combine_splits, combine_splits_reference,
                                                combine_tiling, rows_at_once)


def partial_outputs(rows: int, splits: int, head_dim_v: int, generator: torch.Generator):
    """Random partials as split kernels leave them: empty splits have lse -inf and out 0; row 0 is empty in
    every split; lse values spread over a wide range (one split can dominate a row)."""
    split_out = torch.randn(rows, splits, head_dim_v, generator=generator)
    split_lse = torch.randn(rows, splits, generator=generator) * 8
    empty = torch.rand(rows, splits, generator=generator) < 0.3
    empty[0] = True
    split_lse[empty] = float("-inf")
    split_out[empty] = 0.0
    return split_out, split_lse


def test_reference_on_a_hand_made_row():
    split_out = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])
    split_lse = torch.tensor([[0.0, 0.0, float("-inf")]])
    out, lse = combine_splits_reference(split_out, split_lse)
    assert torch.allclose(out, torch.tensor([[2.0, 3.0]], dtype=torch.float64))
    assert torch.allclose(lse, torch.tensor([torch.log(torch.tensor(2.0))], dtype=torch.float64))
    empty_out, empty_lse = combine_splits_reference(torch.zeros(1, 2, 2), torch.full((1, 2), float("-inf")))
    assert torch.equal(empty_out, torch.zeros(1, 2, dtype=torch.float64)) and torch.isinf(empty_lse).all()


def _check_combine(device: torch.device, rows: int, splits: int, head_dim_v: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(rows * 131 + splits * 7 + head_dim_v)
    split_out, split_lse = partial_outputs(rows, splits, head_dim_v, generator)
    expected_out, expected_lse = combine_splits_reference(split_out, split_lse)
    # Every element must be written, and nothing past the last row (the rows beyond are the same storage).
    out_storage = torch.full((rows + 8, head_dim_v), float("nan"), dtype=dtype, device=device)
    lse_storage = torch.full((rows + 8,), float("nan"), dtype=torch.float32, device=device)
    out, lse = out_storage[:rows], lse_storage[:rows]
    combine_splits(split_out.to(device), split_lse.to(device), out, lse)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.isnan(out_storage[rows:]).all() and torch.isnan(lse_storage[rows:]).all()
    assert torch.equal(out[0].cpu(), torch.zeros(head_dim_v, dtype=dtype)) and lse[0].item() == float("-inf")
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.cpu().double(), expected_out, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(lse.cpu().double(), expected_lse, rtol=1e-5, atol=1e-5)


# rows, splits (powers of two and not), Dv; the last three take several rows a program (combine_tiling), with a
# partial last program: narrow rows loaded together (1030 x 2 x 64, 601 x 3 x 40), wide ones one after another
# (601 x 3 x 136)
CASES = [(5, 2, 24), (9, 3, 64), (4, 7, 136), (3, 64, 512), (2, 128, 64), (1030, 2, 64), (601, 3, 40),
         (601, 3, 136)]


def test_tiling_packs_rows_where_splits_are_few():
    assert combine_tiling(1030, 2, 64) == (4, 64) and combine_tiling(601, 3, 136) == (2, 256)
    assert combine_tiling(10**6, 2, 16) == (4, 16)  # at most COMBINE_MAX_ROWS rows, however small
    assert combine_tiling(4096, 2, 512) == (4, 512)  # MLA, 32 sequences: whole rows, four a program
    assert combine_tiling(128, 64, 512) == (1, 64)  # many splits: one row, 64 columns a program
    assert combine_tiling(64, 2, 64) == (1, 64)  # few rows: no packing below COMBINE_MIN_PROGRAMS programs


def test_narrow_rows_load_together_and_wide_ones_in_turn():
    assert combine_tiling(2048, 3, 128) == (4, 128) and rows_at_once(4, 3, 128)  # GTA B32 Lq 4: 512 elements a row
    assert rows_at_once(2, 3, 64) and not rows_at_once(2, 3, 256)  # 601 x 3 x 40 and 601 x 3 x 136 above
    assert not rows_at_once(4, 2, 512)  # MLA B32: 1024 elements a row
    assert not rows_at_once(1, 2, 64)  # one row a program


def test_the_launch_takes_the_tile_form_for_narrow_rows(interpret_kernels):
    """CASES' two at-once shapes run the tile form (a launch that dropped the choice would pass the value tests)."""
    for rows, splits, head_dim_v, together in [(1030, 2, 64, True), (601, 3, 40, True), (601, 3, 136, False)]:
        launch = combine_launch(torch.empty(rows, splits, head_dim_v), torch.empty(rows))
        assert launch.constexprs["ROWS_AT_ONCE"] is together, (rows, splits, head_dim_v)


@pytest.mark.parametrize("rows, splits, head_dim_v", CASES)
def test_combine_interpreted(rows, splits, head_dim_v, interpret_kernels):
    _check_combine(torch.device("cpu"), rows, splits, head_dim_v, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows, splits, head_dim_v", CASES)
def test_combine_gpu(rows, splits, head_dim_v, dtype, cuda_device):
    _check_combine(cuda_device, rows, splits, head_dim_v, dtype)

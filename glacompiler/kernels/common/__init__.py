"""The floor under every kernel family: what a split-KV decode kernel needs besides its own main loop.

- `templates`: the Jinja2 environment over the shipped templates, generated modules keyed by their source, and
  the version of a family's kernels (a hash of their code, not of file names).
- `triton_launch`: launches that skip Triton's per-call argument binding after the first.
- `splits`, `tiles`, `device_limits`: how many KV splits fill the GPU, tile widths, what a GPU gives a program.
- `key_bounds`: which keys a row may see (lengths, the mask as a kernel operand, the mask's key range).
- `mask_range` (+ `mask_range_kernel`): the mask's key range per sequence, with its reference beside it.
- `split_buffers` and `combine` (+ `combine_kernel`, `split_merge`): partial outputs and their LSE merge, with its
  reference.
- `softmax`, `clamps`, `log2_domain`: the Triton helpers the templates share (log2(e), the mask predicate, the
  online-softmax row max, row normalisation; the clamps on lengths and page ids).
- `search_space`: a tuning space over a family's config (each family builds its own).
- `interpreter`: whether the Triton interpreter runs the kernels.

Modules named *_kernel, `softmax` and `clamps` import triton: they load only when a kernel runs, after the
Triton interpreter has been chosen (TRITON_INTERPRET is read when triton is imported)."""

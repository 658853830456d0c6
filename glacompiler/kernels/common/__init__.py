"""The floor under every kernel family: what a split-KV decode kernel needs besides its own main loop.

- `templates`: the Jinja2 environment over the shipped templates, generated modules keyed by their source,
  and the version of a family's kernels (a hash of their source, not of file names).
- `triton_launch`: launches that skip Triton's per-call argument binding after the first.
- `splits`: how many KV splits fill the GPU.
- `key_bounds`: which keys a row may see (lengths, the mask as a kernel operand, the mask's key range).
- `mask_range` (+ `mask_range_kernel`): the mask's key range per sequence, with its reference beside it.
- `split_buffers` and `combine` (+ `combine_kernel`): partial outputs and their LSE merge, with its reference.
- `softmax`: the Triton helpers the templates share (log2(e), the mask predicate, the online-softmax step).

Modules named *_kernel and `softmax` import triton: they load only when a kernel runs, after the Triton
interpreter has been chosen (TRITON_INTERPRET is read when triton is imported)."""

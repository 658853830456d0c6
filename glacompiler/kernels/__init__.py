"""Hand-written Triton kernels that need no per-spec specialisation (the attention kernels are generated from
templates/). Imported late: the Triton interpreter must be chosen before triton loads."""

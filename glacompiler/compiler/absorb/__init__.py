"""Weight absorption: a decode site whose K and V are per-head linear maps of one cached latent (K_nope =
latent @ W_UK_h, V = latent @ W_UV_h, with or without a shared rope key joined to K), as transformers'
DeepSeek-V2/V3 and any MLA/GLA written in the expanding form compute them, becomes the absorbed MLA/GLA op
call: attention on the latent cache itself instead of on K and V rebuilt from the whole cache every step.

locate.py     elements followed back through views and narrowings (slices, split pieces) with their offsets
expansion.py  K or V cut along its head dim into the parts it is joined from (cat, new_empty + copy_, expand)
latent.py     a part checked as a per-head linear map of a latent: which side is the latent, which the weight
weights.py    W_UK / W_UV as views of the model's weight (reshape, slices, permute)
plan.py       plan_absorption(): the AbsorbedPlan, Decline with the reason, or NotLatent (not a candidate)
emit.py       emit_absorbed(): q @ W_UK, the op on the latent, @ W_UV^T, laid out as the site's output

Only decode sites are absorbed: a site the pass leaves to Inductor as written (prefill, more than 16 query
tokens) keeps its expanded form. A site that looks like an expansion but is not matched exactly is fused as
written (MHA) and the report says why it was not absorbed."""
from __future__ import annotations

from .emit import emit_absorbed
from .plan import AbsorbedPlan, NotLatent, plan_absorption

__all__ = ["AbsorbedPlan", "NotLatent", "emit_absorbed", "plan_absorption"]

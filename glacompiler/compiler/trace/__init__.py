"""Stage 2, trace: each operand of a site followed back to the graph tensor it reads, index by index.

sizes.py       int/SymInt arithmetic that never adds a guard
layout.py      index algebra over chains of view-like ops
operands.py    an operand through views, lossless casts and scalar multiplies
products.py    batched products (bmm, mm, SDPA's implied ones) as index maps
score_side.py  the softmax input back to the q.k products: terms, scale, masks
slots.py       the score tensor cut into slots, and each slot's role
masks.py       masks reduced to what the op takes
value_side.py  the probabilities times V: V's axes and the attention output
"""

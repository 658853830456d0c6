"""Stage 1, find: the attention sites of an ATen graph.

sites.py    find_sites(): SDPA calls, and softmaxes over a q.k product whose result feeds a product
softmax.py  the softmax forms AOT leaves in the graph (decomposed, safe, single node)
sdpa.py     the SDPA ops and their arguments, read by schema name
"""

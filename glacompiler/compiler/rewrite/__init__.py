"""Stage 4, rewrite: emit.py puts the op call and its views into the graph and drops the old site."""

"""Size arithmetic that works for ints and SymInts without adding guards: a question that cannot be
answered statically is answered "no", so the matcher declines instead of specialising the graph."""
from __future__ import annotations

from typing import Iterable, Union

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

Size = Union[int, torch.SymInt]


def is_concrete(size) -> bool:
    return isinstance(size, int) and not isinstance(size, bool)


def known_equal(a: Size, b: Size) -> bool:
    if is_concrete(a) and is_concrete(b):
        return a == b
    return statically_known_true(a == b)


def known_less(a: Size, b: Size) -> bool:
    if is_concrete(a) and is_concrete(b):
        return a < b
    return statically_known_true(a < b)


def known_one(size: Size) -> bool:
    return known_equal(size, 1)


def divides(divisor: Size, size: Size) -> bool:
    """True when divisor statically divides size exactly (e.g. s0 divides 8 * s0)."""
    if is_concrete(divisor) and is_concrete(size):
        return divisor != 0 and size % divisor == 0
    if known_equal(divisor, size):
        return True
    if is_concrete(divisor) and divisor == 0:
        return False
    return statically_known_true(size % divisor == 0)


def simplify(size: Size) -> Size:
    """A SymInt whose expression is a number becomes that int."""
    if is_concrete(size):
        return size
    expr = size.node.expr
    return int(expr) if getattr(expr, "is_number", False) else size


def exact_div(size: Size, divisor: Size) -> Size:
    """size / divisor for a divisor known to divide size (see divides)."""
    return 1 if known_equal(divisor, size) else simplify(size // divisor)


def product(sizes: Iterable[Size]) -> Size:
    result: Size = 1
    for size in sizes:
        result = size if is_concrete(result) and result == 1 else result * size
    return simplify(result)


def size_hint(size: Size):
    """The example value behind a size (the size itself when concrete), or None for an unbacked size."""
    if is_concrete(size):
        return size
    hint = getattr(size.node, "hint", None)
    return None if hint is None else int(hint)

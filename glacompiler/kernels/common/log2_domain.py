"""The kernels keep scores in the log2 domain (exp2 is one instruction): exp(x) = exp2(x * LOG2_E), and they
take the softmax scale premultiplied by LOG2_E."""

LOG2_E = 1.4426950408889634
LN_2 = 0.6931471805599453


def log2_scale(softmax_scale: float) -> float:
    """The scale argument of every decode kernel."""
    return softmax_scale * LOG2_E

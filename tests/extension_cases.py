"""Random arguments for FlashAttention's extensions (softcap, alibi_slopes, sinks, window_size), shared by the
interpreter and GPU tests."""
import torch


def extension_arguments(features: str, spec, batch: int, generator: torch.Generator, dtype=torch.float32,
                        window: int = 21) -> dict:
    """Random extension arguments for the features named in `features` (a '+'-joined subset of softcap, alibi,
    alibi_batch, sinks, window, window_right)."""
    heads = spec.num_q_heads
    arguments = {}
    for feature in features.split("+"):
        if feature == "softcap":
            arguments["softcap"] = 1.5  # scaled scores reach several units: the cap bites
        elif feature == "alibi":
            arguments["alibi_slopes"] = torch.rand(heads, generator=generator) * 0.5
        elif feature == "alibi_batch":
            arguments["alibi_slopes"] = torch.rand(batch, heads, generator=generator) * 0.5
        elif feature == "sinks":
            arguments["sinks"] = (torch.randn(heads, generator=generator) * 2).to(dtype)
        elif feature == "window":
            arguments["window_size"] = (window, -1)
        elif feature == "window_right":
            arguments["window_size"] = (window // 2, 1)
        elif feature:
            raise ValueError(feature)
    return arguments

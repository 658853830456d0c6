"""Site records of compiled graphs, kept on disk beside Inductor's caches, so that compile_report() stays
right when Inductor serves a graph from its caches.

Our pass runs inside AOTAutograd (joint_custom_pre_pass). On an inference graph it runs before Inductor's
FX-graph cache lookup, so an FX-graph cache hit still makes records; but an AOTAutograd cache hit returns the
compiled graph without tracing it again, and the pass (with its records) is skipped. So the backend saves the
records of every graph it compiles under a key of what decided them, and restores them on such a hit.

Why records are saved rather than rebuilt from the cached graph: the compiled graph shows only the rewritten
sites (as op calls), not the skipped ones or why they were skipped.

The key: the pass's uuid (its sources and options, graph_pass.py), the dynamo graph (its code and each node's
stack trace, which the records' sources come from), the example inputs (sizes, strides, dtypes, devices,
symbolic sizes), grad mode, and Inductor's and functorch's config. Anything that changes the AOTAutograd
cache's key without changing ours cannot change what the pass sees in a way these do not capture, except a
config set outside both; where no records are found for a hit, the backend compiles the graph again with the
AOTAutograd cache off (torch_compile_backend.py), so records are never guessed.

Files: <Inductor cache dir>/glacompiler_records/<key>.json, one list of records per graph; clearing
Inductor's cache dir clears them with the graphs they describe."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional

import torch

from ..atomic_file import write_text_atomically
from ..spec import AttentionSpec
from .report import SiteRecord

RECORDS_FOLDER = "glacompiler_records"
FORMAT = 1  # bump when SiteRecord's fields change


def records_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return os.path.join(cache_dir(), RECORDS_FOLDER)


def _describe_value(value) -> str:
    """Sizes, strides, dtype, device (and symbolic sizes) of a graph input; never its data."""
    if isinstance(value, torch.Tensor):
        return (f"tensor{tuple(value.shape)}{tuple(value.stride())}{value.dtype}{value.device.type}"
                f"{value.requires_grad}")
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)):
        return f"{type(value).__name__}:{value}"
    return type(value).__name__


def graph_records_key(gm: torch.fx.GraphModule, example_inputs, pass_uuid: Optional[str],
                      config_patches: dict) -> Optional[str]:
    """The key of this graph's records, or None when the pass has no uuid (Inductor then caches nothing)."""
    if pass_uuid is None:
        return None
    hasher = hashlib.sha256()

    def add(text: str) -> None:
        hasher.update(text.encode("utf-8", "surrogatepass"))
        hasher.update(b"\0")

    add(f"format {FORMAT}")
    add(str(pass_uuid))
    add(torch.__version__)
    add(f"grad {torch.is_grad_enabled()}")
    add(gm.code)
    for node in gm.graph.nodes:
        add(node.meta.get("stack_trace") or "")
        if node.op == "placeholder":
            add(_describe_value(node.meta.get("example_value")))
    for value in example_inputs:
        add(_describe_value(value))
    add(_config_hash(config_patches))
    return hasher.hexdigest()


def _config_hash(config_patches: dict) -> str:
    """Inductor's and functorch's config with the backend's patches on; custom passes left out (their uuids
    are in the pass's uuid, and the objects themselves do not hash the same in another process)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    patches = {name: value for name, value in config_patches.items() if not name.endswith("custom_pre_pass")}
    patches["joint_custom_pre_pass"] = None
    with inductor_config.patch(patches):
        return (inductor_config.get_hash() + functorch_config.get_hash()).hex()


def _record_to_json(record: SiteRecord) -> dict:
    fields = dataclasses.asdict(record)
    fields.pop("graph")  # the graph's name is this process's counter: set again on restore
    return fields


def _record_from_json(fields: dict, graph_name: str) -> SiteRecord:
    spec = fields.pop("spec")
    return SiteRecord(**fields, spec=None if spec is None else AttentionSpec(**spec), graph=graph_name)


def save_records(key: str, records: list) -> None:
    """Write atomically (another process may read the same key); a failure to write only loses the report of
    a later cache hit, which then recompiles, so it is not raised."""
    folder = records_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        payload = json.dumps({"format": FORMAT, "records": [_record_to_json(r) for r in records]})
        write_text_atomically(os.path.join(folder, f"{key}.json"), payload)
    except OSError:
        pass


def load_records(key: str, graph_name: str) -> Optional[list]:
    """The records saved under key, renamed to this process's graph name; None when there are none usable."""
    try:
        with open(os.path.join(records_dir(), f"{key}.json")) as file:
            payload = json.load(file)
        if payload.get("format") != FORMAT:
            return None
        return [_record_from_json(dict(fields), graph_name) for fields in payload["records"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None

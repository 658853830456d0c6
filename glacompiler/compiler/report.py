"""What the backend did, one record per attention site.

    print(glacompiler.compile_report())   # a table, one row per site, and "N rewritten, M skipped"
    format_report()                       # the same text, as a string
    glacompiler.reset_report()            # forget the records

compile_report() is a list of SiteRecord (status, kind, spec, form, source, reason, graph); the table shows
each source without its line of code, which the record keeps. Records last until reset_report() or
torch._dynamo.reset(), which throws away the compiled graphs they describe.

GLACOMPILER_LOG=1 also logs each record as it is made (logger "glacompiler", level INFO; shown on stderr
when the application configured no logging)."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from typing import Optional

from ..spec import AttentionSpec

logger = logging.getLogger("glacompiler")

REWRITTEN = "rewritten"
SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class SiteRecord:
    kind: Optional[str]  # 'mha', 'gqa', 'mqa', 'gta', 'mla', 'gla'; None when the shapes were not understood
    spec: Optional[AttentionSpec]
    source: str  # user source line from dynamo's stack trace, or the graph node name
    status: str  # 'rewritten' | 'skipped'
    reason: str  # why skipped ('' when rewritten)
    form: str  # how the attention was written: 'sdpa:<aten op>' or the softmax form
    graph: str  # which compiled graph
    mask: str = ""  # rewritten: how the op gets the mask ('lengths', 'boolean', 'additive'; '' without one)

    def __str__(self) -> str:
        spec = "" if self.spec is None else (
            f" hq={self.spec.num_q_heads} hkv={self.spec.num_kv_heads} dq={self.spec.head_dim_q}"
            f" dk={self.spec.head_dim_k} dv={self.spec.head_dim_v} dr={self.spec.rope_dim} {self.spec.dtype}"
        )
        tail = f": {self.reason}" if self.reason else ""
        mask = f" mask={self.mask}" if self.mask else ""
        return f"[{self.status}] {self.kind or '?'}{spec} ({self.form}){mask} at {self.source}{tail}"

    @property
    def location(self) -> str:
        """The source without its line of code: 'file:line in function' (or the graph node)."""
        return self.source.split(": ", 1)[0]


class CompileReport(list):
    """compile_report()'s answer: the SiteRecords in the order they were made; str() is the table."""

    def __str__(self) -> str:
        return format_report(self)


_records: list = []
_lock = threading.Lock()


def compile_report() -> CompileReport:
    """Records of every attention site seen since the last reset_report() or torch._dynamo.reset()."""
    with _lock:
        _forget_if_dynamo_was_reset()
        return CompileReport(_records)


def reset_report() -> None:
    with _lock:
        _records.clear()


def discard_records(records: list) -> None:
    """Take back records of a compile that is being redone (the retry makes its own)."""
    taken = {id(record) for record in records}
    with _lock:
        _records[:] = [record for record in _records if id(record) not in taken]


def add_records(records: list) -> None:
    with _lock:
        _forget_if_dynamo_was_reset()
        _records.extend(records)
        _mark_dynamo_generation()
    if _logging_enabled():
        _ensure_visible()
        for record in records:
            logger.info("%s", record)


# torch._dynamo.reset() has no hook of its own, but it clears dynamo's compile callbacks. A no-op start
# callback registered with the records marks the dynamo "generation" they belong to: once it is gone, the
# records describe compiles that a reset threw away. Without that API (another torch) records stay until
# reset_report().


def _dynamo_generation_marker(*args) -> None:
    """Runs at each dynamo compile start and does nothing; its presence is the mark."""


def _dynamo_callbacks():
    """dynamo's compile callback handler, when dynamo is loaded and has one; never imports dynamo."""
    handler = getattr(sys.modules.get("torch._dynamo.callback"), "callback_handler", None)
    usable = isinstance(getattr(handler, "start_callbacks", None), list) and hasattr(handler, "register_start_callback")
    return handler if usable else None


def _marked(handler) -> bool:
    return any(callback is _dynamo_generation_marker for callback in handler.start_callbacks)


def _forget_if_dynamo_was_reset() -> None:
    handler = _dynamo_callbacks()
    if _records and handler is not None and not _marked(handler):
        _records.clear()


def _mark_dynamo_generation() -> None:
    handler = _dynamo_callbacks()
    if handler is not None and not _marked(handler):
        handler.register_start_callback(_dynamo_generation_marker)


COLUMNS = ("status", "kind", "heads q/kv", "dims q/k/v/rope", "dtype", "form", "mask", "graph", "source", "reason")


def _row(record: SiteRecord) -> tuple:
    spec = record.spec
    heads = "-" if spec is None else f"{spec.num_q_heads}/{spec.num_kv_heads}"
    dims = "-" if spec is None else f"{spec.head_dim_q}/{spec.head_dim_k}/{spec.head_dim_v}/{spec.rope_dim}"
    return (record.status, record.kind or "?", heads, dims, "-" if spec is None else spec.dtype,
            record.form or "-", record.mask or "-", record.graph or "-", record.location, record.reason)


def summary_line(records: list) -> str:
    rewritten = sum(record.status == REWRITTEN for record in records)
    sites = "site" if len(records) == 1 else "sites"
    return f"{len(records)} attention {sites}: {rewritten} rewritten, {len(records) - rewritten} skipped"


def format_report(records: Optional[list] = None) -> str:
    """The records (default: compile_report()) as an aligned table, one row per site, and a summary line."""
    records = compile_report() if records is None else records
    if not records:
        return "no attention sites seen"
    rows = [COLUMNS] + [_row(record) for record in records]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS) - 1)]
    lines = ["  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip()
             for row in rows]
    return "\n".join(lines + [summary_line(records)])


def _logging_enabled() -> bool:
    return os.environ.get("GLACOMPILER_LOG", "0") not in ("", "0")


def _ensure_visible() -> None:
    """GLACOMPILER_LOG=1 must show records even where the application configured no logging."""
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("glacompiler: %(message)s"))
        logger.addHandler(handler)


def source_location(node) -> str:
    """The innermost user frame of the node's stack trace: 'file:line in function: code'."""
    trace = node.meta.get("stack_trace") if node is not None else None
    if not trace:
        return f"graph node {getattr(node, 'name', '?')}"
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if line.startswith("File "):
            code = lines[index + 1] if index + 1 < len(lines) and not lines[index + 1].startswith("File ") else ""
            parts = line.split(",")
            filename = parts[0][len("File "):].strip().strip('"')
            lineno = parts[1].strip().replace("line ", "") if len(parts) > 1 else "?"
            function = parts[2].strip().replace("in ", "", 1) if len(parts) > 2 else "?"
            where = f"{os.path.basename(filename)}:{lineno} in {function}"
            return f"{where}: {code}" if code else where
    return lines[-1]

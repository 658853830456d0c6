"""What the backend did, one record per attention site: glacompiler.compile_report() / reset_report().
GLACOMPILER_LOG=1 also logs each record as it is made (logger "glacompiler")."""
from __future__ import annotations

import dataclasses
import logging
import os
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

    def __str__(self) -> str:
        spec = "" if self.spec is None else (
            f" hq={self.spec.num_q_heads} hkv={self.spec.num_kv_heads} dq={self.spec.head_dim_q}"
            f" dk={self.spec.head_dim_k} dv={self.spec.head_dim_v} dr={self.spec.rope_dim} {self.spec.dtype}"
        )
        tail = f": {self.reason}" if self.reason else ""
        return f"[{self.status}] {self.kind or '?'}{spec} ({self.form}) at {self.source}{tail}"


_records: list = []
_lock = threading.Lock()


def compile_report() -> list:
    """Records of every attention site seen since the last reset_report()."""
    with _lock:
        return list(_records)


def reset_report() -> None:
    with _lock:
        _records.clear()


def format_report(records: Optional[list] = None) -> str:
    records = compile_report() if records is None else records
    if not records:
        return "no attention sites seen"
    return "\n".join(str(record) for record in records)


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


def add_records(records: list) -> None:
    with _lock:
        _records.extend(records)
    if _logging_enabled():
        _ensure_visible()
        for record in records:
            logger.info("%s", record)


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

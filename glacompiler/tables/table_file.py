"""Tuned-config tables: the JSON format, its schema check, where the files live, reading and writing.

One file per GPU name (as torch reports it, spaces to underscores), in two places:
  user cache:  $GLACOMPILER_CACHE_DIR/configs/<GPU>.json  (default ~/.cache/glacompiler/configs/)
  shipped:     the package resource glacompiler.tuned_configs (tuned_configs/ in the source tree)

A file (TABLE_SCHEMA below is the authoritative description):
  {"format": 2, "gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0",
   "date": "2026-11-26T10:00:00+00:00", "commands": ["glacompiler autotune --preset mla ..."],
   "kernel_versions": {"portable": "<KernelFamily.kernels_version()>",
                       "portable+fused_combine": "<a variant's version>", ...},
   "entries": [{"family": "portable", "spec": {AttentionSpec fields},
                "bucket": {"batch": 128, "capacity": 8192, "query_len": 1}, "page_size": 64,
                "config": {the family's config fields}, "tuned_us": 512.3,
                "default_config": {...}, "default_us": 640.1, "trials": 24,
                "rejected": [{"config": {...}, "us": 500.0, "reason": "..."}]}]}
`default_*` is the family's heuristic config timed in the same run; `rejected` lists faster configs whose
output did not match the default's. `kernel_versions` holds the version of each family's kernels the entries
were tuned on, and of each kernel variant some entries run (KernelFamily.variant_versions: an opt-in choice
rendered as another kernel): an entry whose family's kernels or variant changed since is stale, and ignored.
Format 1 (one "templates_version", portable entries only) is still read.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional

from ..atomic_file import write_text_atomically
from ..kernels import family_named
from ..kernels.common.templates import cache_dir
from ..package_data import shipped_folder
from ..spec import AttentionSpec

FORMAT_VERSION = 2
LEGACY_FORMAT = 1  # one templates_version for portable-only entries


class TableFormatError(ValueError):
    """A table file that does not follow TABLE_SCHEMA (or holds values the dataclasses reject)."""


def _field_schema(cls) -> dict:
    """Object schema of a dataclass with int/bool/str fields: every field required but an Optional one (a choice
    added after tables were written: to_dict leaves it out when None, and an entry without it reads as None),
    nothing else allowed."""
    kinds = {"int": "integer", "bool": "boolean", "str": "string"}
    properties, required = {}, []
    for field in dataclasses.fields(cls):
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        optional = kind.startswith("Optional[")
        properties[field.name] = {"type": kinds[kind.removeprefix("Optional[").removesuffix("]") if optional else kind]}
        if not optional:
            required.append(field.name)
    return {"type": "object", "required": sorted(required), "properties": properties, "additionalProperties": False}


_POSITIVE_INT = {"type": "integer", "minimum": 1}
_TIME_US = {"type": "number", "exclusiveMinimum": 0}

_CONFIG = {"type": "object"}  # checked against the entry's family in TableEntry.from_json

TABLE_SCHEMA: dict = {
    "type": "object",
    "required": ["format", "gpu", "torch", "triton", "date", "commands", "kernel_versions", "entries"],
    "additionalProperties": False,
    "properties": {
        "format": {"type": "integer", "enum": [FORMAT_VERSION]},
        "gpu": {"type": "string"},
        "torch": {"type": "string"},
        "triton": {"type": "string"},
        "date": {"type": "string"},
        "commands": {"type": "array", "items": {"type": "string"}},
        "kernel_versions": {"type": "object"},
        "entries": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["family", "spec", "bucket", "page_size", "config", "tuned_us", "default_config",
                             "default_us", "trials", "rejected"],
                "additionalProperties": False,
                "properties": {
                    "family": {"type": "string"},
                    "spec": _field_schema(AttentionSpec),
                    "bucket": {
                        "type": "object",
                        "required": ["batch", "capacity", "query_len"],
                        "additionalProperties": False,
                        "properties": {"batch": _POSITIVE_INT, "capacity": _POSITIVE_INT, "query_len": _POSITIVE_INT},
                    },
                    "page_size": {"type": "integer", "minimum": 0},
                    "config": _CONFIG,
                    "tuned_us": _TIME_US,
                    "default_config": _CONFIG,
                    "default_us": _TIME_US,
                    "trials": {"type": "integer", "minimum": 0},
                    "rejected": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["config", "us", "reason"],
                            "additionalProperties": False,
                            "properties": {"config": _CONFIG, "us": _TIME_US,
                                           "reason": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}

_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def check_schema(value: Any, schema: dict, path: str = "$") -> None:
    """Check value against the subset of JSON Schema that TABLE_SCHEMA uses (type, enum, required,
    properties, additionalProperties, items, minimum, exclusiveMinimum). Raises TableFormatError naming the
    offending path."""
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, _JSON_TYPES[kind])
        if kind in ("integer", "number") and isinstance(value, bool):
            ok = False  # JSON true is no number, whatever Python thinks
        if kind == "number" and ok and not math.isfinite(value):
            ok = False
        if not ok:
            raise TableFormatError(f"{path}: expected {kind}, got {type(value).__name__} {value!r:.60}")
    if "enum" in schema and value not in schema["enum"]:
        raise TableFormatError(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        raise TableFormatError(f"{path}: {value!r} is below the minimum {schema['minimum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        raise TableFormatError(f"{path}: {value!r} must be greater than {schema['exclusiveMinimum']}")
    if kind == "object":
        for name in schema.get("required", ()):
            if name not in value:
                raise TableFormatError(f"{path}: missing key {name!r}")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                check_schema(item, properties[name], f"{path}.{name}")
            elif schema.get("additionalProperties", True) is False:
                raise TableFormatError(f"{path}: unexpected key {name!r}")
    if kind == "array" and "items" in schema:
        for index, item in enumerate(value):
            check_schema(item, schema["items"], f"{path}[{index}]")


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """The shape key of a table entry: batch, cache capacity (logical S) and query length."""

    batch: int
    capacity: int
    query_len: int

    def log_distance(self, other: "Bucket") -> float:
        """Distance in log2 space: buckets double and halve, so 1K -> 2K is as far as 16K -> 32K."""
        return math.sqrt(sum((math.log2(a) - math.log2(b)) ** 2 for a, b in
                             ((self.batch, other.batch), (self.capacity, other.capacity),
                              (self.query_len, other.query_len))))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return f"b{self.batch} s{self.capacity} q{self.query_len}"


@dataclasses.dataclass
class TableEntry:
    family: str  # the kernel family the configs are for (kernels.FAMILIES)
    spec: AttentionSpec
    bucket: Bucket
    page_size: int
    config: Any  # the family's config type
    tuned_us: float
    default_config: Any
    default_us: float
    trials: int
    rejected: list = dataclasses.field(default_factory=list)  # [{"config": dict, "us": float, "reason": str}]

    @property
    def speedup(self) -> float:
        return self.default_us / self.tuned_us

    @property
    def key(self) -> tuple:
        return (self.family, self.spec.key(), self.bucket)

    def to_json(self) -> dict:
        return {
            "family": self.family,
            "spec": self.spec.to_dict(),
            "bucket": self.bucket.to_dict(),
            "page_size": self.page_size,
            "config": self.config.to_dict(),
            "tuned_us": round(self.tuned_us, 3),
            "default_config": self.default_config.to_dict(),
            "default_us": round(self.default_us, 3),
            "trials": self.trials,
            "rejected": list(self.rejected),
        }

    @classmethod
    def from_json(cls, data: dict, path: str = "$") -> "TableEntry":
        family = family_named(data["family"])
        config_schema = _field_schema(family.config_type)
        check_schema(data["config"], config_schema, f"{path}.config")
        check_schema(data["default_config"], config_schema, f"{path}.default_config")
        for index, rejected in enumerate(data["rejected"]):
            check_schema(rejected["config"], config_schema, f"{path}.rejected[{index}].config")
        spec = AttentionSpec.from_dict(data["spec"])
        config = family.config_from_dict(data["config"])
        problem = family.config_problem(config, spec)
        if problem:  # (a table edited by hand, or written for other kernels): not found at run time instead
            raise TableFormatError(f"{path}.config: {problem}")
        return cls(
            family=family.name,
            spec=spec,
            bucket=Bucket(**data["bucket"]),
            page_size=data["page_size"],
            config=config,
            tuned_us=float(data["tuned_us"]),
            default_config=family.config_from_dict(data["default_config"]),
            default_us=float(data["default_us"]),
            trials=data["trials"],
            rejected=list(data["rejected"]),
        )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _library_versions() -> tuple[str, str]:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "unavailable"
    return torch.__version__.split("+")[0], triton_version


def current_kernel_version(key: str) -> Optional[str]:
    """The version of a family's kernels ('portable') or of one of its variants ('portable+fused_combine'; None
    where the family no longer has it)."""
    family = family_named(family_of_version(key))
    return family.kernels_version() if key == family.name else family.variant_versions().get(key)


def family_of_version(key: str) -> str:
    return key.partition("+")[0]


def entry_versions(entry: "TableEntry") -> tuple:
    """The kernel_versions keys of the kernels an entry's config runs."""
    family = family_named(entry.family)
    return (entry.family, *family.config_variants(entry.config, entry.spec))


@dataclasses.dataclass
class ConfigTable:
    gpu: str
    kernel_versions: dict  # family (or family+variant) -> the version of the kernels its entries were tuned on
    torch_version: str
    triton_version: str
    date: str
    commands: list
    entries: dict  # (family, spec key, Bucket) -> TableEntry

    @classmethod
    def new(cls, gpu: str) -> "ConfigTable":
        torch_version, triton_version = _library_versions()
        return cls(gpu, {}, torch_version, triton_version, _now(), [], {})

    def families(self) -> list:
        return sorted({entry.family for entry in self.entries.values()}
                      | {family_of_version(key) for key in self.kernel_versions})

    def _current_version(self, key: str) -> bool:
        return self.kernel_versions.get(key) == current_kernel_version(key)

    def is_current_for(self, family: str) -> bool:
        """Whether the family's entries were tuned on the family's kernels, and each variant they run, as they are
        now."""
        return self._current_version(family) and all(
            self._current_version(key) for key in self.kernel_versions if family_of_version(key) == family)

    def is_current_entry(self, entry: "TableEntry") -> bool:
        return all(self._current_version(key) for key in entry_versions(entry))

    @property
    def stale_families(self) -> list:
        return [family for family in self.families() if not self.is_current_for(family)]

    @property
    def is_current(self) -> bool:
        return not self.stale_families

    def current_entries(self) -> list:
        """The entries whose kernels (their family's, and any variant they run) have not changed since they were
        tuned."""
        return [entry for entry in self.sorted_entries() if self.is_current_entry(entry)]

    def drop_stale(self) -> list:
        """Remove the entries whose kernels changed, and the versions that are not current; returns the families
        that had either."""
        stale = self.stale_families
        self.entries = {key: entry for key, entry in self.entries.items() if self.is_current_entry(entry)}
        self.kernel_versions = {key: version for key, version in self.kernel_versions.items()
                                if self._current_version(key)}
        return stale

    def add(self, entry: TableEntry) -> None:
        for key in entry_versions(entry):
            version = current_kernel_version(key)
            if self.kernel_versions.setdefault(key, version) != version:
                raise ValueError(f"the table's {key} entries were tuned for kernels {self.kernel_versions[key]}, not "
                                 f"the current {version}: drop them first")
        self.entries[entry.key] = entry

    def get(self, family: str, spec: AttentionSpec, bucket: Bucket) -> Optional[TableEntry]:
        return self.entries.get((family, spec.key(), bucket))

    def sorted_entries(self) -> list:
        return [self.entries[key] for key in sorted(self.entries)]

    def record_run(self, command: str) -> None:
        """Stamp the table with this run: its command, the date and the library versions."""
        self.torch_version, self.triton_version = _library_versions()
        self.date = _now()
        if command and command not in self.commands:
            self.commands.append(command)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "gpu": self.gpu,
            "torch": self.torch_version,
            "triton": self.triton_version,
            "date": self.date,
            "commands": list(self.commands),
            "kernel_versions": dict(sorted(self.kernel_versions.items())),
            "entries": [entry.to_json() for entry in self.sorted_entries()],
        }

    @classmethod
    def from_json(cls, data: Any) -> "ConfigTable":
        if isinstance(data, dict) and data.get("format") == LEGACY_FORMAT:
            data = _from_legacy_format(data)
        check_schema(data, TABLE_SCHEMA)
        table = cls(data["gpu"], dict(data["kernel_versions"]), data["torch"], data["triton"], data["date"],
                    list(data["commands"]), {})
        for index, item in enumerate(data["entries"]):
            try:
                entry = TableEntry.from_json(item, f"$.entries[{index}]")
            except (TypeError, ValueError) as error:  # e.g. an unknown kind or a block size that is no power of two
                if isinstance(error, TableFormatError):
                    raise
                raise TableFormatError(f"$.entries[{index}]: {error}") from None
            table.entries[entry.key] = entry
        return table


def _from_legacy_format(data: dict) -> dict:
    """A format-1 table as format 2: its one templates_version and its entries belong to the portable kernels."""
    data = dict(data)
    data["format"] = FORMAT_VERSION
    data["kernel_versions"] = {"portable": data.pop("templates_version", "")}
    data["entries"] = [{"family": "portable", **entry} if isinstance(entry, dict) else entry
                       for entry in data.get("entries", [])]
    return data


def read_table(path: os.PathLike) -> ConfigTable:
    """Parse and validate one table file; TableFormatError for bad JSON or a schema violation."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TableFormatError(f"not valid JSON: {error}") from None
    return ConfigTable.from_json(data)


def write_table(table: ConfigTable, path: os.PathLike) -> None:
    """Write atomically (temp file + rename): a run killed mid-write leaves the previous table intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = table.to_json()
    check_schema(data, TABLE_SCHEMA)
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")


def open_for_update(path: os.PathLike, gpu: str) -> tuple[ConfigTable, Optional[str]]:
    """The table a tuning run adds to: the existing file for this GPU (less the entries of families whose kernels
    changed since), else a new one. Returns (table, note) where note says which entries were dropped."""
    path = Path(path)
    if not path.exists():
        return ConfigTable.new(gpu), None
    try:
        table = read_table(path)
    except TableFormatError as error:
        raise TableFormatError(f"{path}: {error}; move it away or fix it before tuning into it") from None
    if table.gpu != gpu:
        raise TableFormatError(f"{path} holds configs for {table.gpu!r}, not for this GPU ({gpu!r})")
    stale = table.drop_stale()
    if stale:
        return table, (f"{path}: entries of {', '.join(stale)} were tuned for kernels that have changed since; "
                       "they are dropped")
    return table, None


def gpu_file_name(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3.json'."""
    return gpu_name.strip().replace(" ", "_").replace("/", "_") + ".json"


def user_tables_dir() -> Path:
    return cache_dir() / "configs"


def user_table_path(gpu_name: str) -> Path:
    return user_tables_dir() / gpu_file_name(gpu_name)


def shipped_tables_dir() -> Path:
    """The shipped tables: the installed package resource glacompiler.tuned_configs, or tuned_configs/ of a
    source checkout used in place."""
    return Path(str(shipped_folder("tuned_configs")))


def shipped_table_path(gpu_name: str) -> Path:
    return shipped_tables_dir() / gpu_file_name(gpu_name)


def speedup_summary(entries: Iterable[TableEntry]) -> Optional[dict]:
    """Median and worst tuned-over-default speed-up of a set of entries (None when empty)."""
    speedups = sorted(entry.speedup for entry in entries)
    if not speedups:
        return None
    middle = len(speedups) // 2
    median = speedups[middle] if len(speedups) % 2 else (speedups[middle - 1] + speedups[middle]) / 2
    return {"entries": len(speedups), "median": median, "worst": speedups[0], "best": speedups[-1]}

"""Kernel sources from the Jinja2 templates: rendering, generated modules keyed by their source, and the
version of a family's kernels.

Templates live in the top-level templates/ folder (shipped as glacompiler.templates), one sub-folder per
family, and are named by their path there ("portable/decode_attention.py.jinja"); what the kernels share is
plain Triton in kernels/common/ (softmax.py, clamps.py), which the generated sources import.
A rendered source is written to $GLACOMPILER_CACHE_DIR/kernels/<hash>.py and imported from there: @triton.jit
needs a real source file."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import sys
import tokenize
from pathlib import Path
from types import ModuleType
from typing import Iterable

import jinja2

from ...atomic_file import write_text_atomically
from ...package_data import shipped_folder


def cache_dir() -> Path:
    root = os.environ.get("GLACOMPILER_CACHE_DIR") or os.path.join(Path.home(), ".cache", "glacompiler")
    return Path(root)


def _load_template(name: str) -> str:
    folder = shipped_folder("templates")
    for part in name.split("/"):
        folder = folder.joinpath(part)
    return folder.read_text()


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,  # a variable the caller forgot is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **variables) -> str:
    """The source of a template (its path under templates/) with `variables` filled in."""
    return _environment().get_template(template).render(**variables)


def template_names() -> list[str]:
    """Every template shipped, as 'folder/name.jinja'."""
    names = []

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".jinja"):
                names.append(prefix + entry.name)

    walk(shipped_folder("templates"), "")
    return sorted(names)


def import_generated(source: str) -> ModuleType:
    """Import a generated source as a module named by its hash (written once, shared by processes)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    module_name = f"glacompiler_generated_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    directory = cache_dir() / "kernels"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{module_name}.py"
    if not path.exists() or path.read_text() != source:
        write_text_atomically(path, source)  # concurrent processes never import a half-written file
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[module_name] = module
    return module


def code_tokens(source: str) -> str:
    """What the compiler sees of a Python source: its tokens, with comments, blank lines and layout dropped."""
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL):
            continue
        kept.append("\n" if token.type == tokenize.NEWLINE else token.string)
    return " ".join(kept)


# The Triton helpers that generated kernels import: part of every family's kernels.
SHARED_HELPERS = ("softmax.py", "clamps.py", "log2_domain.py")


def shared_helper_sources() -> list[str]:
    folder = Path(__file__).resolve().parent
    return [(folder / name).read_text() for name in SHARED_HELPERS]


def kernels_version(sources: Iterable[str]) -> str:
    """A family's kernels version: a hash of the code of its generated sources and of the shared helpers they
    import. It changes when a kernel changes, not when a template moves, is renamed, or has its comments edited
    (tuned tables record it: a table tuned for other kernels is stale)."""
    digest = hashlib.sha256()
    for source in [*sources, *shared_helper_sources()]:
        digest.update(code_tokens(source).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _inputs_digest() -> str:
    """A hash of every file the generated kernels come from: the kernels package and the templates."""
    digest = hashlib.sha256()
    kernels = Path(__file__).resolve().parent.parent
    files = sorted(kernels.rglob("*.py"))
    for name in template_names():
        digest.update(name.encode())
        digest.update(_load_template(name).encode())
    for path in files:
        digest.update(str(path.relative_to(kernels)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def cached_kernels_version(family: str, compute) -> str:
    """compute() (a family's kernels version, which renders and tokenizes its kernels: ~0.1-0.4 s), remembered on
    disk under a hash of the files the kernels come from, so that a process finds it in a few milliseconds."""
    path = cache_dir() / "kernel_versions" / f"{family}-{_inputs_digest()}"
    try:
        return path.read_text().strip()
    except OSError:
        pass
    version = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, version)
    except OSError:  # a read-only cache: compute again next time
        pass
    return version

"""Where the shipped data folders (templates/, tuned_configs/) are: inside the installed package
(glacompiler.templates, glacompiler.tuned_configs), or at the top of a source checkout used in place."""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def shipped_folder(name: str):
    """name: 'templates' or 'tuned_configs'. Returns a Traversable (a Path in a source checkout)."""
    try:
        return importlib.resources.files(f"glacompiler.{name}")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / name

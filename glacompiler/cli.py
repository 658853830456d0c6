"""The `glacompiler` command: `demo`, `autotune` and `configs show` (also `python -m glacompiler`)."""
from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

from . import demo
from .tuning import command as tuning_command


def package_version() -> str:
    try:
        return importlib.metadata.version("glacompiler")
    except importlib.metadata.PackageNotFoundError:
        return source_checkout_version()


def source_checkout_version() -> str:
    """The version in pyproject.toml beside the package: a source tree used without installing it."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE) if pyproject.is_file() else None
    return f"{found.group(1)} (source checkout, not installed)" if found else "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glacompiler", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    demo.register(subparsers)
    tuning_command.register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

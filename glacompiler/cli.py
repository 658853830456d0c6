"""The `glacompiler` command: `demo`, `autotune` and `configs show` (also `python -m glacompiler`)."""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import sys
from pathlib import Path

from . import demo
from .parallel.environment import keep_nvlink_multicast_off
from .tuning import command as tuning_command
from .usage import EXIT_USAGE, UsageError

# What a shell reports for a writer killed by SIGPIPE (128 + 13). Python ignores the signal and raises
# BrokenPipeError instead, which main turns into this status, quietly.
EXIT_BROKEN_PIPE = 141


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


def run_command(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def silence_stdout() -> None:
    """Point stdout at devnull: Python flushes stdout again at exit, and that write to the closed pipe would
    fail again, this time with an 'Exception ignored' message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv=None) -> int:
    """Run one command. A reader that stops early (`glacompiler configs show | head`) ends it quietly. NVLink
    multicast is switched off before anything could start NCCL (glacompiler.parallel.environment)."""
    keep_nvlink_multicast_off()
    try:
        try:
            return run_command(argv)
        finally:
            sys.stdout.flush()  # a closed pipe must fail here, where it is caught, not at interpreter exit
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())

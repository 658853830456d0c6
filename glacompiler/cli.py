"""The `glacompiler` command: `demo`, `autotune` and `configs show`."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import demo
    from .tuning import command as tuning_command

    parser = argparse.ArgumentParser(prog="glacompiler", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    demo.register(subparsers)
    tuning_command.register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

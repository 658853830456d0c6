"""`python -m glacompiler ...`: the same command as the `glacompiler` script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""The command line's one error type: a request the user can fix, reported as `glacompiler <command>: error:
<message>` with exit status 2 and no traceback (glacompiler.cli catches it from every subcommand)."""

EXIT_USAGE = 2


class UsageError(ValueError):
    pass

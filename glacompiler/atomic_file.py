"""Files written whole or not at all: the text goes to a temporary file beside the target, which is then renamed
over it, so a reader (another process, or this one after a crash) never sees half a file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Optional


def write_text_atomically(path: os.PathLike, text: str, mode: Optional[int] = None) -> None:
    """Write text to path through a temporary file and a rename (the folder must exist); mode: the file's
    permission bits (default: the temporary file's, 0600). The temporary file is removed if anything fails."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise

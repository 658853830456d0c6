"""atomic_file.write_text_atomically: the whole text or the previous file, never half, and no temporary left."""
import os
import stat

import pytest

from glacompiler.atomic_file import write_text_atomically


def test_replaces_the_file_whole_with_the_mode_asked(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    write_text_atomically(path, "new text\n", mode=0o644)
    assert path.read_text() == "new text\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(path, "\ud800")  # a lone surrogate: the write itself fails
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]

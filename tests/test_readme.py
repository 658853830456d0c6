"""The README's smallest use, run as a user would paste it: a fresh Python process on this machine's CPU."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_snippet_runs_and_rewrites_its_attention(tmp_path):
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert snippets, "README.md has no ```python block"
    script = tmp_path / "snippet.py"
    script.write_text(snippets[0])
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 attention site: 1 rewritten, 0 skipped" in result.stdout, result.stdout[-3000:]

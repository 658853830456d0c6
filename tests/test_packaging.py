"""templates/ and tuned_configs/ sit at the top of the repo but ship inside the wheel: build it, install it
into a fresh virtual environment and render a kernel from the installed copy."""
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_templates_and_renders_a_kernel(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True,
    )
    wheel = next(wheel_dir.glob("glacompiler-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       check=True, capture_output=True, text=True).stdout.strip()
    )
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site_packages), str(wheel)],
                   check=True)
    # Dependencies (torch, jinja2, ...) come from this environment, appended after the fresh site-packages;
    # a .pth outside a site dir is not executed, so this environment's editable glacompiler stays invisible.
    (site_packages / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = textwrap.dedent(
        """
        import glacompiler, glacompiler.codegen as codegen
        from glacompiler.testing import PAPER_MEMBERS
        from glacompiler.config import KernelConfig
        assert "site-packages" in glacompiler.__file__ and "%s" not in glacompiler.__file__, glacompiler.__file__
        source = codegen.render_decode_kernel(PAPER_MEMBERS["gla2"].spec("bfloat16", True), KernelConfig())
        assert "def decode_attention_split_kernel" in source
        print(codegen.template_names(), codegen.templates_version())
        """
        % ROOT
    )
    result = subprocess.run([str(python), "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert "decode_attention.py.jinja" in result.stdout
    with __import__("zipfile").ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "glacompiler/templates/decode_attention.py.jinja" in names
    assert any(name.startswith("glacompiler/tuned_configs/") for name in names)

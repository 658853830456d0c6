"""What users install: the wheel. It is built from the source files (no stale build/ folder), installed into a
fresh virtual environment that cannot see this checkout or its editable install, and used from there: a masked
op call and a paged call on the generated kernels (Triton interpreter), and a backend="gla" compile of
attention with a mask. Also: every package folder is listed in pyproject.toml, and the shipped data is in."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole models, subprocesses or wheel builds

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    """A package missing from [tool.setuptools] packages is missing from the wheel, and an editable install
    hides it (this is how glacompiler.kernels once went missing)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "glacompiler").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert on_disk - listed == set(), f"add to pyproject.toml's packages: {sorted(on_disk - listed)}"
    shipped_data = {"glacompiler.templates", "glacompiler.tuned_configs"}  # mapped from the top-level folders
    assert listed - on_disk == shipped_data, f"listed but not on disk: {sorted(listed - on_disk - shipped_data)}"
    for path in on_disk:
        assert (ROOT / path.replace(".", "/") / "__init__.py").is_file(), f"{path} has no __init__.py"


def source_copy(destination: Path) -> Path:
    """The project's files as a fresh clone has them (git's tracked and untracked-unignored files), so that no
    build/ left over from an earlier build can leak stale modules into the wheel."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split("\n")
    for name in filter(None, listing):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, the wheel)."""
    root = tmp_path_factory.mktemp("wheel")
    source = source_copy(root / "source")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                            "-w", str(root / "dist"), str(source)], check=True, capture_output=True, text=True)
    assert "would be ignored" not in build.stdout + build.stderr, "setuptools skips a data folder: see the build log"
    wheel = next((root / "dist").glob("glacompiler-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site_packages), str(wheel)],
                   check=True)
    # The dependencies (torch, triton, jinja2, ...) come from this environment, appended after the fresh
    # site-packages; a .pth outside a site dir is not executed, so this environment's editable install of
    # glacompiler stays invisible.
    (site_packages / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, wheel


def run_installed(python: Path, script: str, cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(TRITON_INTERPRET="1", GLACOMPILER_CACHE_DIR=str(cwd / "cache"))
    result = subprocess.run([str(python), "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_wheel_ships_every_module_and_the_shipped_data(installed_wheel):
    _, wheel = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (ROOT / "templates").rglob("*.jinja"):
        assert f"glacompiler/templates/{template.relative_to(ROOT / 'templates')}" in names
    for table in (ROOT / "tuned_configs").glob("*.json"):
        assert f"glacompiler/tuned_configs/{table.name}" in names
    for module in (ROOT / "glacompiler").rglob("*.py"):
        assert str(module.relative_to(ROOT)) in names
    assert not any(name.startswith("glacompiler/templates/") and name.count("/") == 2 and name.endswith(".jinja")
                   for name in names), "a template outside its family folder: a stale build?"


def test_installed_wheel_runs_the_kernels_and_the_backend(installed_wheel, tmp_path):
    python, _ = installed_wheel
    output = run_installed(python, f"""
        import torch, torch.nn.functional as F
        import glacompiler
        assert "site-packages" in glacompiler.__file__ and {str(ROOT)!r} not in glacompiler.__file__, glacompiler.__file__
        from glacompiler.op import kernel_family_for
        from glacompiler.problems import check_fa_rule, make_decode_problem
        from glacompiler.spec import AttentionSpec

        # A masked call and a paged call, on the generated kernels (the interpreter).
        masked = make_decode_problem(AttentionSpec.grouped(4, 2, 16), batch=2, query_len=2, capacity=40,
                                     mask="bool", mask_rows="token", causal=False)
        paged = make_decode_problem(AttentionSpec.grouped_tied(4, 2, 32, 16), batch=2, query_len=1, capacity=48,
                                    page_size=16)
        for problem in (masked, paged):
            assert kernel_family_for(**{{k: v for k, v in problem.kwargs.items() if k != "causal"}}).name == "portable"
            out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
            check_fa_rule(out, lse, problem)

        # backend="gla" on attention with a mask.
        def attend(q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(*shape, generator=g) for shape in ((2, 4, 1, 16), (2, 2, 24, 16), (2, 2, 24, 16)))
        mask = torch.arange(24)[None, None, None, :] < torch.tensor([24, 9])[:, None, None, None]
        with torch.no_grad():
            got = torch.compile(attend, backend="gla")(q, k, v, mask)
        torch.testing.assert_close(got, attend(q, k, v, mask), rtol=1e-4, atol=1e-5)
        report = glacompiler.compile_report()
        assert [record.status for record in report] == ["rewritten"], str(report)
        print("installed wheel ok")
    """, tmp_path)
    assert "installed wheel ok" in output


def test_wheel_metadata_names_the_license(installed_wheel):
    with zipfile.ZipFile(installed_wheel[1]) as wheel:
        metadata = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
        headers = wheel.read(metadata).decode().split("\n\n")[0].splitlines()
        licenses = [name for name in wheel.namelist() if ".dist-info/licenses/" in name]
        assert [name.rsplit("/", 1)[1] for name in licenses] == ["LICENSE"]
        assert wheel.read(licenses[0]).decode() == (ROOT / "LICENSE").read_text()
    assert "License-Expression: BSD-3-Clause" in headers
    assert "License-File: LICENSE" in headers

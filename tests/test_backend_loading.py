"""Loading the backend package: the report needs neither Inductor nor dynamo, the backend class loads on
first use and registers "gla" as it loads. Each check runs in a fresh interpreter (sys.modules is the thing
under test)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "glacompiler"

# glacompiler/__init__.py itself imports glacompiler.backend's backend function eagerly; this stand-in for
# the top-level package lets the backend package be imported on its own, so that what is measured is what
# glacompiler.backend pulls in.
STANDIN_PARENT = f"""
import sys, types
parent = types.ModuleType("glacompiler")
parent.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["glacompiler"] = parent
"""

HEAVY = ("torch._dynamo", "torch._inductor")


def run_fresh(script: str, standin_parent: bool = True) -> str:
    """The last line the script prints, run in a fresh interpreter."""
    source = (STANDIN_PARENT if standin_parent else "") + textwrap.dedent(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACOMPILER")}
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_backend_package_and_report_leave_dynamo_and_inductor_unloaded():
    loaded = run_fresh(f"""
        import glacompiler.backend
        import glacompiler.backend.report
        from glacompiler.backend import compile_report, format_report, reset_report
        reset_report()
        assert list(compile_report()) == [] and format_report() == "no attention sites seen"
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
    """)
    assert loaded == "[]"


def test_backend_class_loads_on_first_access_and_registers_gla():
    registered = run_fresh("""
        import glacompiler.backend as package
        assert "glacompiler.backend.torch_compile_backend" not in sys.modules
        instance = package.gla_backend
        from torch._dynamo.backends import registry
        assert registry._COMPILER_FNS["gla"] is instance
        assert package.backend().__class__ is package.GlaBackend and "gla_backend" in dir(package)
        print("registered")
    """)
    assert registered == "registered"


@pytest.mark.xfail(strict=True, reason="needs the lazy glacompiler/__init__.py of the package restructuring: "
                   "today it imports the backend class eagerly. Remove this marker when merging it.")
def test_importing_the_report_through_glacompiler_leaves_dynamo_and_inductor_unloaded():
    loaded = run_fresh(f"""
        import sys
        import glacompiler.backend
        from glacompiler.backend import compile_report, format_report, reset_report
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
    """, standin_parent=False)
    assert loaded == "[]"

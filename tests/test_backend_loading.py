"""Loading: `import glacompiler` is the op alone, the compiler package and its report need neither Inductor
nor dynamo, the backend class loads on first use and registers "gla" as it loads. Each check runs in a fresh
interpreter (sys.modules is the thing under test)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # whole models, subprocesses or wheel builds

HEAVY = ("torch._dynamo", "torch._inductor")


def run_fresh(script: str) -> str:
    """The last line the script prints, run in a fresh interpreter."""
    source = "import sys\n" + textwrap.dedent(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACOMPILER")}
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_backend_package_and_report_leave_dynamo_and_inductor_unloaded():
    loaded = run_fresh(f"""
        import glacompiler.compiler
        import glacompiler.compiler.report
        from glacompiler.compiler import compile_report, format_report, reset_report
        reset_report()
        assert list(compile_report()) == [] and format_report() == "no attention sites seen"
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
    """)
    assert loaded == "[]"


def test_backend_class_loads_on_first_access_and_registers_gla():
    registered = run_fresh("""
        import glacompiler.compiler as package
        assert "glacompiler.compiler.torch_compile_backend" not in sys.modules
        instance = package.gla_backend
        from torch._dynamo.backends import registry
        assert registry._COMPILER_FNS["gla"] is instance
        assert package.backend().__class__ is package.GlaBackend and "gla_backend" in dir(package)
        print("registered")
    """)
    assert registered == "registered"


def test_import_glacompiler_loads_the_op_without_the_compiler():
    """`import glacompiler` gives the op and nothing heavy: no Inductor or dynamo (the backend loads when
    torch.compile asks for it), no triton (the interpreter is chosen when triton first loads), no optuna or
    sympy (tuning only)."""
    loaded = run_fresh(f"""
        import glacompiler
        assert callable(glacompiler.attention_with_kvcache) and callable(glacompiler.backend)
        print(sorted(name for name in {HEAVY + ("triton", "optuna", "sympy")!r} if name in sys.modules))
    """)
    assert loaded == "[]"


def test_the_report_through_glacompiler_leaves_dynamo_and_inductor_unloaded():
    loaded = run_fresh(f"""
        import glacompiler
        glacompiler.reset_report()
        assert "no attention sites" in str(glacompiler.compile_report()) and callable(glacompiler.format_report)
        assert callable(glacompiler.backend)  # the factory, whatever was imported before
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
    """)
    assert loaded == "[]"

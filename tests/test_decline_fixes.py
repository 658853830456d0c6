"""Issue 12 section 5, as a guard: every Decline the pass can raise says what would let the site fuse. An AST
scan of glacompiler/compiler finds each construction; each must pass a `fix=` that is not empty (a string, an
f-string or a shared constant such as UNEXPECTED_GRAPH)."""
import ast
import pathlib

import glacompiler.compiler
from glacompiler.compiler import decline

COMPILER = pathlib.Path(glacompiler.compiler.__file__).parent


def decline_calls():
    """(file:line, the Call node) of every Decline(...) under glacompiler/compiler."""
    for path in sorted(COMPILER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Decline":
                yield f"{path.relative_to(COMPILER)}:{node.lineno}", node


def missing_fix(call: ast.Call) -> bool:
    fix = next((keyword.value for keyword in call.keywords if keyword.arg == "fix"), None)
    if fix is None:
        return True
    if isinstance(fix, ast.Constant):
        return not (isinstance(fix.value, str) and fix.value.strip())
    if isinstance(fix, ast.JoinedStr):
        return not fix.values
    if isinstance(fix, ast.Name):
        return not getattr(decline, fix.id, "").strip()
    return False  # another expression (a conditional, a call): checked when the tests reach it


def test_every_decline_says_what_would_let_it_fuse():
    calls = list(decline_calls())
    assert len(calls) > 100, "the scan found too few Decline constructions: has the package moved?"
    without = [where for where, call in calls if missing_fix(call)]
    assert not without, f"Decline(...) without a fix=: {without}"


def test_explain_names_the_goal():
    """A fused expanded MLA/GLA site's note says what would absorb it (tests/test_backend_report.py checks the
    rest of the form)."""
    declined = decline.Decline("V is not one product of the latent", fix="compute V as one linear map")
    assert declined.explain("model.py:7 in forward: x", locate=None, goal="absorb") == (
        "V is not one product of the latent; to absorb: compute V as one linear map")

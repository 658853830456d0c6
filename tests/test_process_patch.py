"""ProcessPatch: a patch of torch's internals applied at most once a process, with its opt-out."""
from glacompiler.compiler.process_patch import ProcessPatch


def counting_patch(result, opt_out=None):
    calls = []

    def apply():
        calls.append(1)
        return result

    return ProcessPatch(apply, opt_out), calls


def test_applies_once_and_says_whether_it_patched():
    for result in (True, False):
        patch, calls = counting_patch(result)
        assert not patch.tried and not patch.applied
        patch.install()
        patch.install()
        assert calls == [1] and patch.tried and patch.applied is result


def test_the_opt_out_applies_nothing_until_it_is_lifted(monkeypatch):
    patch, calls = counting_patch(True, opt_out="GLACOMPILER_TEST_PATCH")
    monkeypatch.setenv("GLACOMPILER_TEST_PATCH", "0")
    patch.install()
    assert calls == [] and not patch.tried and not patch.applied
    monkeypatch.setenv("GLACOMPILER_TEST_PATCH", "1")
    patch.install()
    assert calls == [1] and patch.applied


def test_a_failed_apply_is_not_retried():
    calls = []

    def apply():
        calls.append(1)
        raise RuntimeError("an internal that changed under us")

    patch = ProcessPatch(apply)
    for _ in range(2):
        try:
            patch.install()
        except RuntimeError:
            pass
    assert calls == [1] and patch.tried and not patch.applied

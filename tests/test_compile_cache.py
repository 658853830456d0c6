"""Inductor's caches with our pass installed: a second process (same caches) is served from the FX-graph and
AOTAutograd caches and compile_report() still lists every site; a change to the pass's sources or options
misses. The pass's uuid (graph_pass.py) and the record store (record_store.py) make this work."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import glacompiler
from compile_cache_model import model_inputs, two_sites
from package_under_test import PACKAGE_PARENT
from glacompiler.compiler import graph_pass, record_store
from glacompiler.compiler.graph_pass import AttentionRewritePass, source_hash
from torch._inductor.custom_graph_pass import CustomGraphPass

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
import torch
import glacompiler
from torch._dynamo.utils import counters
from compile_cache_model import model_inputs, two_sites

device = sys.argv[3]
dtype = torch.float16 if device == "cuda" else torch.float32

def compile_once(rewrite):
    torch._dynamo.reset()
    counters.clear()
    glacompiler.reset_report()
    args = model_inputs(device, dtype)
    with torch.no_grad():
        outputs = torch.compile(two_sites, backend=glacompiler.backend(rewrite=rewrite))(*args)
    return {
        "counters": {group: dict(counters[group]) for group in ("inductor", "aot_autograd", "glacompiler")},
        "report": [str(record) for record in glacompiler.compile_report()],
        "error": max((out.float() - ref).abs().max().item()
                     for out, ref in zip(outputs, two_sites(*[a.float() for a in args]))),
    }

print(json.dumps([compile_once(rewrite=option == "rewrite") for option in sys.argv[1].split(",")]))
"""


def run_in_new_process(package_root: Path, cache_dir: Path, options: str, device: str) -> list:
    """Compiles the model once per option ('rewrite' or 'no-rewrite', comma-separated) in a fresh process."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir / "inductor"),
               GLACOMPILER_CACHE_DIR=str(cache_dir / "glacompiler"), PYTHONPATH=str(package_root))
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT, options, str(Path(__file__).parent), device], env=env, capture_output=True, text=True,
                            timeout=600, cwd=str(cache_dir))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def copy_package(destination: Path) -> Path:
    for folder in ("glacompiler", "templates", "tuned_configs"):
        shutil.copytree(REPO / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def check_second_process(tmp_path, device: str, tolerance: float) -> None:
    (first,) = run_in_new_process(PACKAGE_PARENT, tmp_path, "rewrite", device)
    assert first["counters"]["aot_autograd"].get("autograd_cache_miss") == 1
    assert first["counters"]["inductor"].get("fxgraph_cache_miss") == 1
    statuses = sorted(line.split("]")[0] for line in first["report"])
    assert statuses == ["[rewritten", "[skipped"], first["report"]
    assert any("softmax runs over dim 1" in line for line in first["report"])

    second, unrewritten = run_in_new_process(PACKAGE_PARENT, tmp_path, "rewrite,no-rewrite", device)
    assert second["counters"]["aot_autograd"].get("autograd_cache_hit") == 1
    assert second["counters"]["inductor"].get("fxgraph_cache_hit") == 1
    assert second["counters"]["inductor"].get("fxgraph_cache_miss") is None
    assert second["counters"]["glacompiler"].get("records_restored_from_cache") == 1
    assert second["report"] == first["report"]
    assert second["error"] < tolerance and first["error"] < tolerance

    # Other options of the pass: another uuid, so both caches miss and the pass says why nothing was rewritten.
    assert unrewritten["counters"]["aot_autograd"].get("autograd_cache_miss") == 1
    assert unrewritten["counters"]["inductor"].get("fxgraph_cache_miss") == 1
    assert any("rewriting is disabled" in line for line in unrewritten["report"])


@pytest.mark.slow
def test_second_process_is_served_from_the_caches_with_the_same_report(tmp_path):
    check_second_process(tmp_path, "cpu", tolerance=1e-5)


@pytest.mark.gpu
def test_second_process_on_cuda_with_the_cpp_wrapper(tmp_path, cuda_device):
    """On CUDA the backend compiles with Inductor's C++ wrapper: its compiled graph is served from the caches
    too, and the rewritten site runs our Triton kernels (fp16)."""
    check_second_process(tmp_path, "cuda", tolerance=2e-2)


def test_uuid_is_stable_and_follows_the_options_and_chained_passes():
    class KeyedPass(CustomGraphPass):
        def __call__(self, graph):
            pass

        def uuid(self):
            return "user-pass-1"

    plain = AttentionRewritePass(graph_name="graph 0").uuid()
    assert plain == AttentionRewritePass(graph_name="graph 7").uuid()  # the name only labels records
    assert plain != AttentionRewritePass(rewrite=False).uuid()
    assert AttentionRewritePass(chained=lambda graph: None).uuid() is None  # a user pass without a uuid
    keyed = AttentionRewritePass(chained=KeyedPass()).uuid()
    assert keyed not in (None, plain) and "user-pass-1" in keyed
    assert AttentionRewritePass(chained=[KeyedPass(), lambda graph: None]).uuid() is None


def test_source_hash_follows_every_source_of_the_pass(tmp_path):
    package = copy_package(tmp_path)
    root = package / "glacompiler"
    before = source_hash(root)
    assert before == source_hash(root)
    for relative in ("compiler/find/sdpa.py", "spec.py", "op/validation.py"):
        path = root / relative
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        assert source_hash(root) != before, relative
        path.write_text(original)
    assert source_hash(root) == before
    (root / "kernels" / "unrelated.py").write_text("# not read by the pass\n")
    assert source_hash(root) == before


@pytest.fixture
def inductor_caches(tmp_path, monkeypatch):
    """Inductor's caches on (conftest turns them off for the other tests), in a fresh directory."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with torch._inductor.config.patch(fx_graph_cache=True), \
            torch._functorch.config.patch(enable_autograd_cache=True):
        yield tmp_path


def compile_fresh(backend="gla"):
    torch._dynamo.reset()
    counters.clear()
    glacompiler.reset_report()
    args = model_inputs()
    with torch.no_grad():
        outputs = torch.compile(two_sites, backend=backend)(*args)
    for out, ref in zip(outputs, two_sites(*args)):
        torch.testing.assert_close(out, ref)
    return [str(record) for record in glacompiler.compile_report()]


@pytest.mark.slow
def test_lost_records_compile_again_and_edited_sources_miss(inductor_caches, monkeypatch):
    """Records lost (their folder removed) while Inductor's entry stays: the graph is compiled again without
    the AOTAutograd cache, so the report is made by the pass, never guessed; the FX-graph cache still hits.
    Then edited pass sources (another source hash): both caches miss. Then a records key that cannot be made:
    no AOTAutograd cache, the pass runs."""
    first = compile_fresh()
    assert counters["aot_autograd"]["autograd_cache_miss"] == 1 and len(first) == 2

    shutil.rmtree(record_store.records_dir())
    rebuilt = compile_fresh()
    assert counters["aot_autograd"]["autograd_cache_hit"] == 1
    assert counters["glacompiler"]["recompiled_for_records"] == 1
    assert counters["inductor"]["fxgraph_cache_hit"] == 2 and counters["inductor"]["fxgraph_cache_miss"] == 0
    assert rebuilt == first
    assert os.listdir(record_store.records_dir())  # saved again for the next hit

    monkeypatch.setattr(graph_pass, "pass_source_hash", lambda: "edited-sources")
    edited = compile_fresh()
    assert counters["aot_autograd"]["autograd_cache_miss"] == 1 and counters["inductor"]["fxgraph_cache_miss"] == 1
    assert edited == first

    # A graph whose records key cannot be made: compiled without the AOTAutograd cache, the pass makes them.
    def unhashable(*args, **kwargs):
        raise TypeError("injected: cannot hash")

    monkeypatch.setattr("glacompiler.compiler.torch_compile_backend.graph_records_key", unhashable)
    monkeypatch.delenv("GLACOMPILER_STRICT", raising=False)
    with pytest.warns(RuntimeWarning, match="without the AOTAutograd cache"):
        unkeyed = compile_fresh()
    assert unkeyed == first
    assert counters["aot_autograd"]["autograd_cache_miss"] == 0 and counters["aot_autograd"]["autograd_cache_hit"] == 0
    assert counters["inductor"]["fxgraph_cache_hit"] == 1


def test_records_round_trip_through_the_store(inductor_caches):
    spec = glacompiler.AttentionSpec.grouped(8, 2, 16, dtype="float32")
    records = [
        glacompiler.compiler.SiteRecord("gqa", spec, "m.py:3 in f: x", "rewritten", "", "sdpa:x", "graph 4"),
        glacompiler.compiler.SiteRecord(None, None, "graph node y", "skipped", "why", "softmax", "graph 4"),
    ]
    record_store.save_records("k" * 64, records)
    loaded = record_store.load_records("k" * 64, "graph 9")
    assert loaded == [record.__class__(**{**record.__dict__, "graph": "graph 9"}) for record in records]
    assert record_store.load_records("0" * 64, "graph 9") is None


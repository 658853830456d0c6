"""benchmarks/bench_hf.py runs as a script: its tiny CPU mode builds both transformers models, prefills a
StaticCache and times decode steps (eager here: the compiled configurations are what test_hf_deepseek.py and
test_backend_hf.py check, and compiling them costs a minute on CPU)."""
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

from benchmark_scripts import load_benchmark_script

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # a subprocess that imports torch and transformers: about 15 s on 2 cores

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_hf.py"


def test_bench_hf_tiny_runs_on_cpu():
    """Each model's row: the first step, the median of the rounds, and the rounds' range around it."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--configurations", "eager", "--steps", "2",
         "--warmup", "1", "--rounds", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for model in ("llama", "deepseek-v3"):
        header = next(i for i, line in enumerate(lines) if line.startswith(f"{model}:"))
        assert "median over 3 rounds" in lines[header], lines[header]
        # The step floor's bytes (its time and each row's fraction of it need the GPU's copy bandwidth).
        assert lines[header + 1].startswith("  step floor: ") and "GB of cache at" in lines[header + 1], lines
        row = lines[header + 3].split()
        assert row[0] == "eager" and float(row[1]) > 0 and float(row[2]) > 0, lines
        low, high = (float(x) for x in row[3].split("-"))
        assert 0 < low <= float(row[2]) <= high, row
        assert float(row[4]) > 0, row  # the host's ns an iteration (host_yardstick.py)


def test_bench_hf_refuses_a_prompt_that_does_not_fit():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--prompt", "40", "--cache", "48"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "exceed the cache capacity" in result.stderr
    # Every round's steps count: 20 + 1 + 1 + 3 x 10 is more than 48.
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--cache", "48", "--steps", "10", "--warmup", "1",
         "--rounds", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "exceed the cache capacity" in result.stderr
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--rounds", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--rounds must be at least 1" in result.stderr
    # A profile of a configuration the run does not time would never print: refused, as an unknown one is.
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--configurations", "eager",
                             "gla", "--host-profile", "gla,default"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "['default'] not among --configurations ['eager', 'gla']" in result.stderr


def test_bench_hf_inductor_settings():
    """--inductor-config NAME=VALUE applies Inductor settings (dotted names too) around every configuration, as the
    script reports from inside that scope; a name that is not a setting, a value that is not a Python literal or
    not of the setting's type is refused before any model is built."""
    def run(*extra):
        return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--models", "llama",
                               "--configurations", "eager", "--steps", "1", "--warmup", "0", *extra],
                              capture_output=True, text=True, timeout=300)

    applied = run("--inductor-config", "freezing=True", "cpp.enable_concat_linear=True", "max_autotune_gemm=False")
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert ("Inductor settings in effect for every configuration: freezing=True, cpp.enable_concat_linear=True, "
            "max_autotune_gemm=False") in applied.stdout
    for bad, message in (("no_such_setting=1", "'no_such_setting=1' is not NAME=VALUE"),
                         ("cpp=1", "'cpp=1' is not NAME=VALUE"),  # a group of settings, not one
                         ("freezing=yes please", "not a Python literal"),
                         ("freezing='yes'", "freezing takes a bool"),
                         ("realize_reads_threshold=True", "realize_reads_threshold takes a int")):
        refused = run("--inductor-config", bad)
        assert refused.returncode == 2 and message in refused.stderr, (bad, refused.stderr[-500:])


def test_round_orders_change():
    """Every configuration once a round; from two rounds on, none is timed right after the same one (or first)
    every round."""
    bench_hf = load_benchmark_script("bench_hf")
    assert bench_hf.round_order(["eager", "default", "gla"], 0) == ["eager", "default", "gla"]
    for count in range(2, 7):
        names = [f"c{i}" for i in range(count)]
        for rounds in range(2, 5):
            orders = [bench_hf.round_order(names, r) for r in range(rounds)]
            assert all(sorted(order) == names for order in orders), orders
            before = {name: {order[order.index(name) - 1] if order.index(name) else None for order in orders}
                      for name in names}
            assert all(len(previous) > 1 for previous in before.values()), (orders, before)
    assert names == [f"c{i}" for i in range(6)]  # not reordered in place


def test_steps_counted_against_the_cache():
    """The first step, the warm-up, every round and, on CUDA, the profiles asked for."""
    bench_hf = load_benchmark_script("bench_hf")
    args = SimpleNamespace(device="cpu", warmup=5, rounds=3, steps=30, profile=["gla"], host_profile=["gla"])
    assert bench_hf.decode_steps_needed(args) == 1 + 5 + 90
    args.device = "cuda"
    assert bench_hf.decode_steps_needed(args) == 1 + 5 + 90 + bench_hf.PROFILED_STEPS * 2 + \
        bench_hf.HOST_PROFILE_ENQUEUES
    args.profile = args.host_profile = []
    assert bench_hf.decode_steps_needed(args) == 1 + 5 + 90


def test_step_floor_bytes():
    """Every weight once but the untied input embedding, and the cache as the model stores it at the valid tokens:
    the tiny Llama's two layers of 2 KV heads of 16, fp32, batch 2."""
    import torch

    bench_hf = load_benchmark_script("bench_hf")
    args = SimpleNamespace(tiny=True, layers=None, vocab=32000, cache=64, batch=2, prompt=20, prefill_chunk=1024)
    model, config = bench_hf.build("llama", args, torch.device("cpu"), torch.float32)
    decoder = bench_hf.Decoder(model, config, args, torch.device("cpu"), torch.float32)
    weights, cache = bench_hf.floor_bytes(model, decoder, args.cache, 22)
    embedding = model.get_input_embeddings().weight
    assert weights == 4 * (sum(p.numel() for p in model.parameters()) - embedding.numel())
    assert cache == 2 * 2 * args.batch * 2 * 16 * 4 * 22  # layers, keys and values, batch, heads, width, bytes, tokens

"""benchmarks/bench_backend.py runs as a script: its tiny CPU mode times the reference modules' decode, the plain
decode under backend="gla", the default backend and eager, and counts the sites each gla compile rewrote (the
count survives the torch._dynamo.reset between configurations, which clears the report)."""
import argparse
import pathlib
import subprocess
import sys

import pytest

from benchmark_scripts import load_benchmark_script

pytestmark = pytest.mark.slow  # a subprocess that imports torch and compiles a model: about 10 s on 2 cores

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_backend.py"


def run_tiny_gta4(*options: str) -> subprocess.CompletedProcess:
    """The script's tiny CPU mode on GTA-4 (2 layers, batch 2, cache 64, one step timed), with `options` added."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--batch", "2", "--cache", "64", "--layers", "2",
         "--iters", "1", "--rounds", "1", "--warmup", "1", "--variants", "gta-4", *options],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_bench_backend_tiny_counts_every_gla_compile_on_cpu():
    result = run_tiny_gta4()
    assert "gta-4: 2/2 attention sites rewritten over 1 gla compile" in result.stdout, result.stdout[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("  ") and "ms/step" not in line]
    # (each row ends in its step's ms, its ratio to the default where it has one, and the host's ns an iteration)
    assert len(rows) >= 4 and all(float(row[-1]) > 0 and float(row[-2].rstrip("x")) > 0 for row in rows), rows


def test_bench_backend_applies_inductor_settings_while_dynamo_traces():
    """--inductor-config freezing=True reaches Dynamo's trace: the weights are constants, so the projections of one
    input fold into one GEMM (tiny GTA-4, 2 layers: q, tied state and rope key, and the MLP's gate and up)."""
    result = run_tiny_gta4("--configurations", "gla", "--inductor-config", "freezing=True", "cpp.weight_prepack=False")
    assert "freezing=True, cpp.weight_prepack=False" in result.stdout, result.stdout[-2000:]
    expected = "gta-4: 2/2 attention sites rewritten over 1 gla compile; 6 projection GEMMs folded into others"
    assert expected in result.stdout, result.stdout[-2000:]


def test_tiny_shrinks_the_shapes_not_given():
    """--tiny alone is a CPU smoke run (2 layers, batch 2, cache 64); given shapes stay; the GPU defaults otherwise."""
    bench_backend = load_benchmark_script("bench_backend")
    parser = argparse.ArgumentParser()
    bench_backend.add_model_arguments(parser)
    for argv, tiny, expected in (([], True, (2, 2, 64)), (["--cache", "128"], True, (2, 2, 128)),
                                 ([], False, (8, 64, 8192)), (["--layers", "3"], False, (3, 64, 8192))):
        args = parser.parse_args(argv)
        bench_backend.fill_model_defaults(args, tiny)
        assert (args.layers, args.batch, args.cache) == expected, argv


def test_host_profile_fills_the_shapes_not_given():
    """host_profile.py shares the model flags, which leave the shapes to fill_model_defaults: its documented command
    (no shape flags) once built the model with None layers and crashed at the cache."""
    host_profile = load_benchmark_script("host_profile")
    args = host_profile.parse_arguments([])
    assert (args.variants, args.layers, args.batch, args.cache, args.tiny) == (["gla-2"], 8, 64, 8192, False)
    args = host_profile.parse_arguments(["--batch", "4", "--variants", "gta-4"])
    assert (args.variants, args.layers, args.batch, args.cache) == (["gta-4"], 8, 4, 8192)


def test_host_profile_part_3_compiles_each_chain_and_checks_it_on_cpu():
    """Part 3 (a compiled site's host time) on the CPU: each case compiles graphs of 1 and 2 chained sites, checks
    each against the op's calls one by one, and gives a figure a site; --chain takes at least 2 calls."""
    import torch

    host_profile = load_benchmark_script("host_profile")
    with torch.no_grad():
        per_site = host_profile.profile_compiled_sites(torch.device("cpu"), 2, rounds=2)
    assert len(per_site) == 4 and all(isinstance(us, float) for us in per_site.values()), per_site
    assert host_profile.parse_arguments(["--parts", "sites"]).parts == ["sites"]
    with pytest.raises(SystemExit):
        host_profile.parse_arguments(["--chain", "1"])

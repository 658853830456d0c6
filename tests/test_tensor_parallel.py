"""Tensor parallelism (glacompiler.parallel): two processes, each holding half of every attention kind's heads,
decode like one process. CPU: 2 gloo processes, fp32. GPU (marked gpu, needs 2 GPUs): 2 NCCL processes, bf16,
FlashAttention's rule against fp32, compiled with CUDA graphs (the row-wise all-reduce captured)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from glacompiler.parallel import local_attention_config
from glacompiler.presets import tiny_config
from tensor_parallel_worker import run_rank

VARIANTS = ["gqa-4", "gta-4", "mla", "gla-2"]
WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(device: str, dtype: str) -> list:
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(run_rank, args=(WORLD, free_port(), device, dtype, VARIANTS, results), nprocs=WORLD,
                       start_method="spawn")
    rows = []
    while not results.empty():
        rows.append(results.get())
    assert sorted((r["rank"], r["variant"]) for r in rows) == sorted(
        (rank, variant) for rank in range(WORLD) for variant in VARIANTS)
    return rows


def check_cache_sizes(rows: list) -> None:
    """Per rank: GQA half the cache; GTA half the tied state plus the whole rope key; MLA the whole latent;
    GLA-2 one of two latent heads plus the rope key. Printed for the record."""
    for row in rows:
        config = tiny_config(row["variant"]).attention
        rope = config.rope_dim if row["kind"] in ("gta", "mla", "gla") else 0
        full_per_token = row["reference_cache_bytes"] // (2 * 32)  # BATCH x CAPACITY tokens
        local_per_token = row["cache_bytes"] // (2 * 32)
        element = full_per_token // config.cache_spec().cache_elements_per_token
        if row["kind"] == "gqa":
            expected = full_per_token // WORLD
        elif row["kind"] == "gta":
            expected = (config.n_kv_heads * config.head_dim // WORLD + rope) * element
        elif row["kind"] == "mla":
            expected = full_per_token
        else:
            expected = (config.n_latent_heads * config.latent_dim // WORLD + rope) * element
        assert local_per_token == expected, row
        print(f"rank {row['rank']} {row['variant']}: cache {local_per_token} B/token/layer on this device "
              f"(single device {full_per_token}), errors {row['errors']}")


@pytest.mark.slow
def test_sharded_decode_matches_one_process_on_gloo():
    rows = run_ranks("cpu", "float32")
    check_cache_sizes(rows)
    compiled_by = {r["kind"]: set(r["errors"]) for r in rows}
    assert compiled_by == {"gqa": {"eager", "attention", "pass"}, "gta": {"eager", "attention", "pass"},
                           "mla": {"eager", "attention", "pass"}, "gla": {"eager", "attention", "gla"}}


@pytest.mark.gpu
def test_sharded_decode_bf16_on_two_gpus():
    assert torch.cuda.device_count() >= 2, "this test needs 2 GPUs (run it on the 2-GPU machine)"
    rows = run_ranks("cuda", "bfloat16")
    check_cache_sizes(rows)


@pytest.mark.parametrize("variant, world, message", [
    ("mqa", 2, "KV heads do not split"),
    ("gla-2", 4, "latent heads do not split"),
    ("gqa-4", 3, "query heads do not split"),
])
def test_impossible_splits_are_refused(variant, world, message):
    with pytest.raises(ValueError, match=message):
        local_attention_config(tiny_config(variant).attention, world)


@pytest.mark.parametrize("variant, heads", [("gqa-4", (8, 2, None)), ("mla", (8, None, 1)), ("gla-2", (8, None, 1))])
def test_local_config_holds_the_ranks_heads(variant, heads):
    local = local_attention_config(tiny_config(variant).attention, 2)
    assert (local.n_heads, local.n_kv_heads, local.n_latent_heads) == heads


@pytest.mark.parametrize("processes, flags, message", [
    ("1", ["--tp", "2"], "--tp 2 needs 2 processes: start it with torchrun --nproc-per-node 2 -m glacompiler demo "
                         "--tp 2"),
    ("2", [], "--tp 1 but torchrun started 2 processes: give --tp 2"),
    ("2", ["--tp", "2", "--variant", "mqa"], "--tp 2 with --variant mqa: mqa: tensor parallelism splits KV heads"),
    ("4", ["--tp", "4", "--variant", "gla-2"], "--tp 4 with --variant gla: gla: tensor parallelism splits latent"),
    ("1", ["--tp", "0"], "--tp must be a positive integer, got 0"),
])
def test_demo_refuses_impossible_tensor_parallel_requests(processes, flags, message, monkeypatch, capsys):
    from glacompiler import cli, demo

    def build_model(*args, **kwargs):
        raise AssertionError("the demo built a model for arguments it should have refused")

    monkeypatch.setattr(demo, "build_model", build_model)
    monkeypatch.setenv("WORLD_SIZE", processes)
    assert cli.main(["demo", "--device", "cpu", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"glacompiler demo: error: {message}"), captured.err
    assert captured.out == ""


def test_entry_points_keep_nvlink_multicast_off(monkeypatch):
    from glacompiler import cli
    from glacompiler.parallel import NVLINK_MULTICAST_OFF

    for name in NVLINK_MULTICAST_OFF:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert {name: os.environ.get(name) for name in NVLINK_MULTICAST_OFF} == NVLINK_MULTICAST_OFF


def test_local_specs_of_the_papers_layouts():
    """What each GPU reads at TP 2: GLA-2 one latent head (of 2), MLA the whole latent, GQA/GTA half the KV heads."""
    from glacompiler.parallel import local_spec
    from glacompiler.presets import PAPER_SPECS

    halves = {name: local_spec(spec, 2) for name, spec in PAPER_SPECS.items()}
    assert (halves["gla2"].num_q_heads, halves["gla2"].num_kv_heads, halves["gla2"].head_dim_k) == (64, 1, 256)
    assert (halves["mla"].num_q_heads, halves["mla"].num_kv_heads, halves["mla"].head_dim_k) == (64, 1, 512)
    assert (halves["gqa"].num_kv_heads, halves["gta"].num_kv_heads, halves["gta"].kind) == (4, 2, "gta")
    assert halves["gla2"].cache_elements_per_token * 2 == PAPER_SPECS["gla2"].cache_elements_per_token + 64
    with pytest.raises(ValueError, match="do not split"):
        local_spec(PAPER_SPECS["gla2"], 4)

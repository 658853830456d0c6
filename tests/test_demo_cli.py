"""`glacompiler demo` arguments: each impossible request is refused before any model is built (exit 2, the
flag named, no traceback), and what is asked for is run as asked, never quietly changed. Cheap: nothing here
compiles; one test decodes a tiny model eagerly."""
import pytest
import torch

from glacompiler import cli, demo


@pytest.fixture
def no_model(monkeypatch):
    """A refusal must come from the argument checks, before any model is built or run."""
    def build_model(*args, **kwargs):
        raise AssertionError("the demo built a model for arguments it should have refused")

    monkeypatch.setattr(demo, "build_model", build_model)


def settings(*flags):
    return demo.settings_from_args(cli.build_parser().parse_args(["demo", *flags]))


@pytest.mark.parametrize("flags,message", [
    (["--variant", "foo", "--device", "cpu"], "--variant foo: unknown attention variant 'foo'"),
    (["--variant", "gqa-3", "--device", "cpu"], "--variant gqa-3: n_heads must be a multiple of n_kv_heads "
                                                "(the CPU model has 16 query heads: N must divide 16)"),
    (["--steps", "-1"], "--steps must be a positive integer, got -1"),
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--prompt", "0"], "--prompt must be a positive integer, got 0"),
    (["--layers", "0"], "--layers must be a positive integer, got 0"),
    (["--batch", "0"], "--batch must be a positive integer, got 0"),
    (["--capacity", "0"], "--capacity must be a positive integer, got 0"),
    (["--timing-steps", "0"], "--timing-steps must be a positive integer, got 0"),
    (["--capacity", "10", "--device", "cpu"], "--capacity 10 cannot hold the 24-token prompt and the 8 tokens "
                                              "decoded after it (--steps 8): give --capacity 32 or more"),
])
def test_demo_refuses_impossible_requests(flags, message, no_model, capsys):
    assert cli.main(["demo", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"glacompiler demo: error: {message}")
    assert captured.err.count("\n") == 1 and captured.out == ""  # one line, no traceback


@pytest.mark.parametrize("flags,message", [
    (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["--layers", "two"], "argument --layers: invalid int value: 'two'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
])
def test_demo_flags_of_the_wrong_type_are_usage_errors(flags, message, no_model, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", *flags])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_demo_runs_what_it_is_asked_for():
    asked = settings("--device", "cpu", "--batch", "1", "--prompt", "30", "--steps", "10", "--capacity", "40",
                     "--layers", "3", "--variant", "GQA-4", "--dtype", "bfloat16")
    assert (asked.batch, asked.prompt_len, asked.steps, asked.capacity) == (1, 30, 10, 40)
    assert asked.model.n_layers == 3 and asked.dtype == torch.bfloat16
    assert (asked.model.attention.kind, asked.model.attention.n_kv_heads) == ("gqa", 4)


def test_demo_defaults_on_cpu_grow_the_cache_to_the_prompt():
    default = settings("--device", "cpu")
    assert (default.batch, default.prompt_len, default.steps, default.capacity) == (2, 24, 8, 64)
    assert default.dtype == torch.float32 and default.timing_steps == 0 and default.notes == ()
    long_prompt = settings("--device", "cpu", "--prompt", "100")
    assert (long_prompt.prompt_len, long_prompt.capacity) == (100, 108)


def test_demo_says_when_a_gpu_only_flag_is_not_used():
    on_cpu = settings("--device", "cpu", "--timing-steps", "50")
    assert on_cpu.timing_steps == 0
    assert on_cpu.notes == ("--timing-steps 50 not used: throughput is timed on a GPU only",)


def test_demo_cache_on_a_gpu_holds_the_timed_steps(monkeypatch):
    """On a GPU the timing decodes --timing-steps tokens after the prompt too (only configs are built here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert settings("--timing-steps", "16", "--capacity", "100").capacity == 100
    with pytest.raises(demo.UsageError, match=r"\(--timing-steps 128\): give --capacity 152 or more"):
        settings("--capacity", "100")
    with pytest.raises(demo.UsageError, match=r"--variant mqa: the paper trains no 'mqa' at size 'xl'"):
        settings("--variant", "mqa")


def test_demo_cache_of_exactly_prompt_plus_steps_is_enough():
    """The capacity check's bound is tight: the eager model decodes every step in a cache of that size."""
    asked = settings("--device", "cpu", "--prompt", "5", "--steps", "3", "--capacity", "8", "--batch", "1")
    with pytest.raises(demo.UsageError, match="give --capacity 8 or more"):
        settings("--device", "cpu", "--prompt", "5", "--steps", "3", "--capacity", "7")
    model = demo.build_model(asked.model, asked.device, asked.dtype, asked.batch, asked.capacity)
    prompt = torch.zeros(asked.batch, asked.prompt_len, dtype=torch.long)
    with torch.no_grad():
        logits = demo.greedy_decode(model, prompt, asked.steps, model.prefill, model.decode)
    assert len(logits) == 3 and all(torch.isfinite(step).all() for step in logits)


def test_execution_path_names_what_runs(monkeypatch):
    from glacompiler.spec import AttentionSpec, ProblemShape

    gla2, gqa = AttentionSpec.latent(16, 2, 256, 64), AttentionSpec.grouped(16, 4, 64)
    shape = ProblemShape(batch=2, query_len=1, capacity=128, page_size=0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert demo.execution_path(torch.device("cpu"), gla2, shape).startswith("PyTorch's CPU attention (set TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert demo.execution_path(torch.device("cpu"), gla2, shape) == \
        "Triton interpreter (CPU, TRITON_INTERPRET=1): the portable kernels, interpreted"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr("glacompiler.kernels.latent_hopper.device_problem", lambda device: None)  # as on sm_90
    assert demo.execution_path(torch.device("cuda"), gla2, shape) == "GPU: the latent_hopper kernels on NVIDIA H200"
    assert demo.execution_path(torch.device("cuda"), gqa, shape) == "GPU: the portable kernels on NVIDIA H200"

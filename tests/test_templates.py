"""Kernel sources from templates (kernels/common/templates.py and each family's render.py): the shipped templates
with their folders, the portable kernel's chunk plan, rendering for every head layout, and the kernels version
that tuned tables record (it follows the kernels' code, not file names, folders or comments)."""
import ast

import pytest

from glacompiler.kernels import FAMILIES
from glacompiler.kernels.common import templates
from glacompiler.kernels.latent_hopper.config import LatentHopperTile
from glacompiler.kernels.latent_hopper.render import render_latent_hopper_kernel
from glacompiler.kernels.portable import render as portable_render
from glacompiler.kernels.portable.config import PortableConfig
from glacompiler.kernels.portable.render import plan_chunks, render_decode_kernel, split_head_dim
from glacompiler.presets import PAPER_SPECS
from glacompiler.spec import AttentionSpec

from kernel_cases import CPU_SPECS


def test_templates_live_in_family_folders():
    # The Hopper latent family's four kernels share their prologue and helpers through included pieces.
    assert templates.template_names() == [
        "latent_hopper/bounds.py.jinja", "latent_hopper/first_copies.py.jinja", "latent_hopper/helpers.py.jinja",
        "latent_hopper/latent_decode.py.jinja", "latent_hopper/latent_decode_alt.py.jinja",
        "latent_hopper/latent_decode_pingpong.py.jinja", "latent_hopper/latent_decode_ws.py.jinja",
        "latent_hopper/macros.py.jinja",
        "latent_hopper/output_half.py.jinja", "latent_hopper/query_load.py.jinja",
        "portable/decode_attention.py.jinja"]
    assert {family.name for family in FAMILIES} == {name.split("/")[0] for name in templates.template_names()}


def test_head_dims_split_into_power_of_two_chunks():
    chunks = split_head_dim(0, 200, 64)
    assert [(c.start, c.width, c.valid) for c in chunks] == [(0, 64, 64), (64, 64, 64), (128, 64, 64), (192, 16, 8)]
    assert chunks[-1].masked and not chunks[0].masked


def test_tied_values_reuse_the_key_chunks():
    # MLA: V is the whole latent, every V chunk is a K chunk already loaded.
    q_chunks, v_chunks, rope = plan_chunks(PAPER_SPECS["mla"], block_d=64)
    assert len(q_chunks) == len(v_chunks) == 8 and [c.reuse for c in v_chunks] == list(range(8))
    assert (rope.width, rope.valid) == (64, 64)
    # GTA: K is the tied state's first d_h - d_R channels; V is all of it, so its last chunk is loaded separately.
    q_chunks, v_chunks, _ = plan_chunks(AttentionSpec.grouped_tied(16, 4, 128, 64), block_d=64)
    assert [c.reuse for c in v_chunks] == [0, None] and v_chunks[1].start == 64
    # A split of the output dims loads its part separately, offset at run time.
    _, v_chunks, _ = plan_chunks(PAPER_SPECS["mla"], block_d=64, dv_split=4)
    assert all(c.reuse is None for c in v_chunks) and sum(c.width for c in v_chunks) == 128


@pytest.mark.parametrize("name", sorted(CPU_SPECS))
def test_every_layout_renders_valid_python(name):
    spec = CPU_SPECS[name]
    for paged in (False, True):
        for dtype in ("bfloat16", "float32"):
            for config in (PortableConfig(), PortableConfig(block_d=32, preload_q=False, dv_split=2)):
                source = render_decode_kernel(spec.with_storage(dtype=dtype, paged=paged), config)
                ast.parse(source)
                assert f"# spec: {spec.with_storage(dtype=dtype, paged=paged).key()}" in source
    if spec.tied and spec.head_dim_q == spec.head_dim_k:
        ast.parse(render_latent_hopper_kernel(spec, LatentHopperTile(row_split=False)))


def test_code_tokens_ignore_comments_and_layout():
    source = "import x\n\n\n@decorate\ndef kernel(a, b):\n    # why\n    c = a + b  # sum\n\n    return c\n"
    reworded = "# Generated from elsewhere\nimport x\n@decorate\ndef kernel(a, b):\n    c = a + b\n    return c\n"
    assert templates.code_tokens(source) == templates.code_tokens(reworded)
    assert templates.code_tokens(source) != templates.code_tokens(source.replace("a + b", "a - b"))


@pytest.fixture
def edited_templates(monkeypatch, tmp_path):
    """Serve the shipped templates through an edit (old -> new), with the rendering caches cleared."""
    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path))

    def edit(old: str, new: str):
        original = templates._load_template

        def load(name):
            text = original(name)
            return text.replace(old, new) if name.startswith("portable/") else text
        monkeypatch.setattr(templates, "_load_template", load)
        templates._environment.cache_clear()
        portable_render.portable_kernels_version.cache_clear()
        return portable_render.portable_kernels_version()

    yield edit
    templates._environment.cache_clear()
    portable_render.portable_kernels_version.cache_clear()


def test_kernels_version_follows_code_not_comments_or_paths(edited_templates):
    shipped = edited_templates("", "")
    # A reworded comment, the header naming another path, blank lines: the same kernels.
    assert edited_templates("# Generated by glacompiler from templates/portable/", "# Generated from a moved folder/") == shipped
    assert edited_templates("    # Empty rows (nothing attended in this split)", "\n\n    # Rows with no keys") == shipped
    # A change to the code: another version, so tables tuned for the old kernels are stale.
    assert edited_templates("scores = scores * qk_scale_log2", "scores = scores * qk_scale_log2 * 1.0") != shipped


def test_kernels_version_follows_the_shared_helpers(monkeypatch):
    sources = ["def kernel():\n    return 1\n"]
    shipped = templates.kernels_version(sources)
    helpers = templates.shared_helper_sources()
    monkeypatch.setattr(templates, "shared_helper_sources", lambda: [text + "\n# a comment\n" for text in helpers])
    assert templates.kernels_version(sources) == shipped
    changed = [text.replace("tl.minimum(tl.maximum(length, 0), capacity)", "tl.maximum(length, 0)") for text in helpers]
    assert changed != helpers
    monkeypatch.setattr(templates, "shared_helper_sources", lambda: changed)
    assert templates.kernels_version(sources) != shipped


def test_versions_are_remembered_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path))
    assert templates.cached_kernels_version("portable", lambda: "0123456789abcdef") == "0123456789abcdef"

    def not_again():
        raise AssertionError("computed twice")
    assert templates.cached_kernels_version("portable", not_again) == "0123456789abcdef"
    assert len(list((tmp_path / "kernel_versions").iterdir())) == 1


def test_every_family_has_a_version():
    versions = {family.name: family.kernels_version() for family in FAMILIES}
    assert all(len(version) == 16 for version in versions.values()) and len(set(versions.values())) == len(versions)

"""Tuned-config tables (glacompiler/tables/): the file format, its schema check, stale families, and the
runtime lookup (user cache over shipped tables, nearest bucket, one warning per bad file, a dict hit after the
first call)."""
import dataclasses
import json
import warnings

import pytest
import torch

from glacompiler.kernels.common.splits import HEURISTIC_MAX_SPLITS, MAX_SPLITS
from glacompiler.kernels.latent_hopper import LATENT_HOPPER, LatentHopperConfig
from glacompiler.kernels.portable import PORTABLE
from glacompiler.kernels.portable.config import PortableConfig
from glacompiler.presets import PAPER_SPECS
from glacompiler.spec import ProblemShape
from glacompiler.tables import lookup, table_file
from glacompiler.tables.lookup import StaleTableWarning, clear_lookup_caches, find_config, tuned_config
from glacompiler.tables.table_file import Bucket, ConfigTable, TableFormatError, read_table, write_table
from tuning_doubles import GPU, GQA, entry, make_table

# Shipped tables whose entries of a family were tuned for kernels that have changed since, and cannot be
# retuned here: {file name: {family: why}}.
KNOWN_STALE: dict = {}  # none (the H100 table tuned before the bounded kernels was removed; today's is current)


def test_table_round_trip_and_file_name(tmp_path):
    table = make_table([entry(GQA, Bucket(8, 8192, 1), PortableConfig(block_n=64, num_splits=4))])
    path = tmp_path / table_file.gpu_file_name(GPU)
    assert path.name == "NVIDIA_H100_80GB_HBM3.json"
    write_table(table, path)
    loaded = read_table(path)
    assert loaded.gpu == GPU and loaded.kernel_versions == {"portable": PORTABLE.kernels_version()} and loaded.is_current
    assert loaded.commands == ["glacompiler autotune --preset gqa"]
    assert loaded.torch_version and loaded.triton_version and loaded.date
    assert loaded.get("portable", GQA, Bucket(8, 8192, 1)).config == PortableConfig(block_n=64, num_splits=4)
    assert loaded.get("portable", GQA, Bucket(8, 8192, 1)).speedup == pytest.approx(1.25)


def _valid_table_json() -> dict:
    return make_table([entry(GQA, Bucket(8, 8192, 1), PortableConfig())]).to_json()


@pytest.mark.parametrize("corrupt,message", [
    (lambda d: d.pop("gpu"), "missing key 'gpu'"),
    (lambda d: d.update(format=3), "not one of"),
    (lambda d: d["entries"][0].update(family="cuda_graph"), "unknown kernel family"),
    (lambda d: d["entries"][0]["config"].update(row_split=True), "unexpected key 'row_split'"),
    (lambda d: d.update(extra=1), "unexpected key 'extra'"),
    (lambda d: d["entries"][0].update(tuned_us=-1.0), "greater than 0"),
    (lambda d: d["entries"][0].update(tuned_us="fast"), "expected number"),
    (lambda d: d["entries"][0]["config"].update(block_m=True), "expected integer"),
    (lambda d: d["entries"][0]["config"].pop("num_warps"), "missing key 'num_warps'"),
    (lambda d: d["entries"][0]["bucket"].update(batch=0), "below the minimum"),
    (lambda d: d["entries"][0]["config"].update(block_m=48), "power of two"),
    (lambda d: d["entries"][0]["spec"].update(kind="linear"), "kind must be one of"),
])
def test_table_schema_rejects_malformed_files(tmp_path, corrupt, message):
    data = _valid_table_json()
    ConfigTable.from_json(data)  # the untouched table is valid
    corrupt(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TableFormatError, match=message):
        read_table(path)


def test_table_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(TableFormatError, match="not valid JSON"):
        read_table(path)


def test_tuning_into_a_stale_or_foreign_file(tmp_path):
    path = tmp_path / "t.json"
    mla = PAPER_SPECS["mla"]
    entries = [entry(GQA, Bucket(8, 8192, 1), PortableConfig()),
               entry(mla, Bucket(8, 8192, 1), LatentHopperConfig(4), family="latent_hopper")]
    write_table(make_table(entries, versions={"portable": "0" * 16}), path)
    table, note = table_file.open_for_update(path, GPU)
    # Only the family whose kernels changed loses its entries.
    assert [e.family for e in table.entries.values()] == ["latent_hopper"] and "portable" in note
    assert table.is_current
    with pytest.raises(TableFormatError, match="not for this GPU"):
        table_file.open_for_update(path, "NVIDIA H200")


def test_format_1_tables_are_read_as_portable_entries(tmp_path):
    data = make_table([entry(GQA, Bucket(8, 8192, 1), PortableConfig(num_splits=3))]).to_json()
    data["format"] = 1
    data["templates_version"] = data.pop("kernel_versions")["portable"]
    for item in data["entries"]:
        del item["family"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    table = read_table(path)
    assert table.is_current_for("portable")
    assert table.get("portable", GQA, Bucket(8, 8192, 1)).config == PortableConfig(num_splits=3)
    # A format-1 table as they were written (its version hashed the template files): stale, but readable.
    data["templates_version"] = "f8607e5e5204ec08"
    path.write_text(json.dumps(data))
    assert read_table(path).stale_families == ["portable"]


def test_a_variant_version_is_recorded_and_checked_for_its_entries_only(tmp_path):
    """An entry whose config fuses the combine runs the portable kernel's fused variant: the table records that
    variant's version beside the family's; a change to the variant leaves the other entries current, and an entry
    tuned before the choice existed (fused_combine open) runs the kernels it was tuned on."""
    fused_key = "portable+fused_combine"
    plain = entry(GQA, Bucket(8, 8192, 1), PortableConfig(num_splits=4, fused_combine=False))
    before_the_choice = entry(GQA, Bucket(8, 1024, 1), PortableConfig(num_splits=4))
    fused = entry(GQA, Bucket(1, 65536, 1), PortableConfig(num_splits=64, fused_combine=True))
    one_split = entry(GQA, Bucket(128, 1024, 1), PortableConfig(num_splits=1, fused_combine=True))
    assert before_the_choice.config.fused_combine is None and one_split.config.fused_combine is False
    table = make_table([plain, before_the_choice, one_split])
    assert set(table.kernel_versions) == {"portable"}
    table.add(fused)
    assert table.kernel_versions == {"portable": PORTABLE.kernels_version(), fused_key: PORTABLE.variant_versions()[fused_key]}
    path = tmp_path / "t.json"
    write_table(table, path)
    loaded = read_table(path)
    assert loaded.is_current and len(loaded.current_entries()) == 4
    assert loaded.get("portable", GQA, Bucket(8, 1024, 1)).config.fused_combine is None  # left out of the file
    # The variant changed since: its entry is stale, the others stay.
    write_table(make_table([plain, before_the_choice, one_split, fused], versions={fused_key: "0" * 16}), path)
    loaded = read_table(path)
    assert loaded.stale_families == ["portable"] and not loaded.is_current_entry(loaded.get("portable", GQA, fused.bucket))
    assert [e.bucket for e in loaded.current_entries()] == sorted([plain.bucket, before_the_choice.bucket, one_split.bucket])
    table, note = table_file.open_for_update(path, GPU)
    assert "portable" in note and set(table.kernel_versions) == {"portable"} and len(table.entries) == 3
    table.add(fused)  # tuned again on the current variant
    assert table.is_current
    # The family's own kernels changed: every entry is stale, the variant's among them.
    write_table(make_table([plain, fused], versions={"portable": "0" * 16}), path)
    assert read_table(path).current_entries() == []


def test_an_entry_for_changed_kernels_cannot_be_added():
    table = make_table([], versions={"portable": "0" * 16})
    with pytest.raises(ValueError, match="drop them first"):
        table.add(entry(GQA, Bucket(8, 8192, 1), PortableConfig()))


@pytest.fixture
def table_dirs(tmp_path, monkeypatch):
    user_root, shipped = tmp_path / "cache", tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(user_root))
    monkeypatch.setattr(table_file, "shipped_tables_dir", lambda: shipped)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPU)
    monkeypatch.setattr(lookup, "_warned_files", set())
    clear_lookup_caches()
    yield user_root / "configs", shipped
    clear_lookup_caches()


CUDA0 = torch.device("cuda", 0)


def shape_of(batch, capacity, query_len=1) -> ProblemShape:
    return ProblemShape(batch=batch, query_len=query_len, capacity=capacity, page_size=64)


def test_lookup_order_user_cache_then_shipped_then_none(table_dirs):
    user_dir, shipped_dir = table_dirs
    bucket = Bucket(8, 8192, 1)
    shipped_config, user_config = PortableConfig(block_n=16, num_splits=2), PortableConfig(block_n=64, num_splits=3)
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) is None  # no tables: the caller uses the heuristic

    write_table(make_table([entry(GQA, bucket, shipped_config)]), shipped_dir / table_file.gpu_file_name(GPU))
    clear_lookup_caches()
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) == shipped_config

    write_table(make_table([entry(GQA, bucket, user_config)]), user_dir / table_file.gpu_file_name(GPU))
    clear_lookup_caches()
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) == user_config
    # Another spec has no entry in either table; CPU tensors never use tables.
    assert tuned_config(PORTABLE, PAPER_SPECS["mla"], shape_of(8, 8192), CUDA0) is None
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), torch.device("cpu")) is None
    # Another GPU's table is not used.
    assert find_config(PORTABLE, GQA, shape_of(8, 8192), "NVIDIA H200") is None


def test_lookup_is_a_dict_hit_after_the_first_call(table_dirs, monkeypatch):
    _, shipped_dir = table_dirs
    config = PortableConfig(block_n=64, num_splits=3)
    write_table(make_table([entry(GQA, Bucket(8, 8192, 1), config)]), shipped_dir / table_file.gpu_file_name(GPU))
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) == config
    assert tuned_config(PORTABLE, GQA, shape_of(9, 8192), CUDA0) is not None  # parsed tables stay in memory

    def no_reading(*args, **kwargs):
        raise AssertionError("the hot path read a file")

    monkeypatch.setattr(table_file, "read_table", no_reading)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_reading)
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) == config
    assert ("portable", GQA, 8, 8192, 1, 64, 0) in lookup._resolved


def test_nearest_bucket_in_log_space(table_dirs):
    _, shipped_dir = table_dirs
    small, large = PortableConfig(block_n=16, num_splits=16), PortableConfig(block_n=64, num_splits=1)
    long_lq = PortableConfig(block_n=32, num_splits=2)
    write_table(make_table([
        entry(GQA, Bucket(8, 8192, 1), small),
        entry(GQA, Bucket(128, 8192, 1), large),
        entry(GQA, Bucket(8, 8192, 4), long_lq),
    ]), shipped_dir / table_file.gpu_file_name(GPU))

    assert find_config(PORTABLE, GQA, shape_of(8, 8192, 1), GPU) == small  # exact
    near_small = find_config(PORTABLE, GQA, shape_of(16, 16384, 1), GPU)  # log2 distance sqrt(2) vs sqrt(10)
    assert dataclasses.replace(near_small, num_splits=16) == small
    assert near_small.num_splits == 8  # twice the sequences: half the splits keep the tuned parallelism
    near_large = find_config(PORTABLE, GQA, shape_of(64, 4096, 1), GPU)  # log2 distance sqrt(2) vs sqrt(4)
    assert dataclasses.replace(near_large, num_splits=1) == large and near_large.num_splits == 2
    assert find_config(PORTABLE, GQA, shape_of(8, 8192, 3), GPU).block_n == 32  # Lq 3 is nearer 4 than 1
    # Splits never shorter than one key block: 256 keys / 16 per block.
    assert find_config(PORTABLE, GQA, shape_of(1, 256, 1), GPU).num_splits == 16
    assert find_config(PORTABLE, GQA, shape_of(2, 128, 1), GPU).num_splits == 8
    # Equidistant buckets: the larger one wins (its split count scales down, never up).
    assert dataclasses.replace(find_config(PORTABLE, GQA, shape_of(32, 8192, 1), GPU), num_splits=1) == large


def test_rescaled_splits_pass_the_heuristic_cap_only_as_far_as_the_tuner_went():
    """A bucket tuned at 16 sequences scaled to one: 16x the splits, capped at HEURISTIC_MAX_SPLITS (more splits
    were slower for most kinds), or at the tuned count where the tuner itself went past that cap."""
    tuned, wanted = ProblemShape(16, 1, 65536, 64), ProblemShape(1, 1, 65536, 64)
    scaled = PORTABLE.rescale_config(PortableConfig(block_n=64, num_splits=8), GQA, tuned, wanted)
    assert scaled.num_splits == HEURISTIC_MAX_SPLITS
    scaled = PORTABLE.rescale_config(PortableConfig(block_n=64, num_splits=MAX_SPLITS), GQA, tuned, wanted)
    assert scaled.num_splits == MAX_SPLITS
    scaled = PORTABLE.rescale_config(PortableConfig(block_n=64, num_splits=MAX_SPLITS), GQA, wanted, tuned)
    assert scaled.num_splits == MAX_SPLITS // 16


def test_stale_entries_are_ignored_with_one_warning_for_the_users_table(table_dirs, caplog):
    user_dir, shipped_dir = table_dirs
    stale_config, user_config = PortableConfig(block_n=16, num_splits=2), PortableConfig(block_n=64, num_splits=3)
    stale_table = make_table([entry(GQA, Bucket(8, 8192, 1), stale_config)], versions={"portable": "0123456789abcdef"})
    write_table(stale_table, user_dir / table_file.gpu_file_name(GPU))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (1, 8, 32, 128):
            assert tuned_config(PORTABLE, GQA, shape_of(batch, 8192), CUDA0) is None
        clear_lookup_caches()  # even when the tables are parsed again
        assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) is None
    stale = [w for w in caught if issubclass(w.category, StaleTableWarning)]
    assert len(stale) == 1 and "portable entries" in str(stale[0].message)

    # A stale shipped table is logged, not warned about: the user cannot refresh it (a release does).
    (user_dir / table_file.gpu_file_name(GPU)).unlink()
    write_table(stale_table, shipped_dir / table_file.gpu_file_name(GPU))
    clear_lookup_caches()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", logger="glacompiler"):
        warnings.simplefilter("always")
        assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) is None
    assert not [w for w in caught if issubclass(w.category, StaleTableWarning)]
    assert any("shipped table" in record.message for record in caplog.records)

    write_table(make_table([entry(GQA, Bucket(8, 8192, 1), user_config)]), user_dir / table_file.gpu_file_name(GPU))
    clear_lookup_caches()
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) == user_config


def _latent_table_json(config: LatentHopperConfig, spec=PAPER_SPECS["gla2"]) -> dict:
    return make_table([entry(spec, Bucket(8, 8192, 1), config, family="latent_hopper")]).to_json()


def test_a_config_field_added_later_may_be_absent_but_not_wrong():
    """LatentHopperConfig.block_n came after tables were written: an entry without it reads as None (the family's
    preferred block size); present, it must be a valid size for the entry's spec; null is no integer."""
    explicit = ConfigTable.from_json(_latent_table_json(LatentHopperConfig(4, False, block_n=128)))
    assert next(iter(explicit.entries.values())).config == LatentHopperConfig(4, False, block_n=128)
    data = _latent_table_json(LatentHopperConfig(4, False))
    assert "block_n" not in data["entries"][0]["config"]
    assert next(iter(ConfigTable.from_json(data).entries.values())).config.block_n is None
    data["entries"][0]["config"]["block_n"] = None
    with pytest.raises(TableFormatError, match="expected integer"):
        ConfigTable.from_json(data)
    data["entries"][0]["config"]["block_n"] = 96
    with pytest.raises(TableFormatError, match="block_n must be"):
        ConfigTable.from_json(data)
    # LatentHopperConfig.one_warpgroup came later too: absent reads as the two-warpgroup tiles, true round-trips,
    # and on a spec it cannot take the file is refused with the reason.
    one = LatentHopperConfig(4, True, 64, one_warpgroup=True)
    data = _latent_table_json(one)
    assert data["entries"][0]["config"]["one_warpgroup"] is True
    assert next(iter(ConfigTable.from_json(data).entries.values())).config == one
    assert "one_warpgroup" not in _latent_table_json(LatentHopperConfig(4, True, 64))["entries"][0]["config"]
    data["entries"][0]["config"]["row_split"] = False
    with pytest.raises(TableFormatError, match="form of the row_split tile"):
        ConfigTable.from_json(data)
    # 128-key blocks do not fit beside MLA's 512-wide latent: the file is refused with the reason, not launched.
    with pytest.raises(TableFormatError, match="do not fit two stages"):
        ConfigTable.from_json(_latent_table_json(LatentHopperConfig(4, False, block_n=128), PAPER_SPECS["mla"]))


def test_tuned_tables_can_be_turned_off(table_dirs, monkeypatch):
    _, shipped_dir = table_dirs
    tuned = PortableConfig(block_n=32, num_splits=3)
    write_table(make_table([entry(GQA, Bucket(8, 8192, 1), tuned)]), shipped_dir / table_file.gpu_file_name(GPU))
    monkeypatch.setenv("GLACOMPILER_TUNED_CONFIGS", "0")
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) is None  # the heuristic runs
    monkeypatch.setenv("GLACOMPILER_TUNED_CONFIGS", "1")
    clear_lookup_caches()
    assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) == tuned


def test_unreadable_table_is_ignored_with_a_warning(table_dirs):
    _, shipped_dir = table_dirs
    (shipped_dir / table_file.gpu_file_name(GPU)).write_text('{"format": 2}')
    with pytest.warns(lookup.BadTableWarning, match="missing key"):
        assert tuned_config(PORTABLE, GQA, shape_of(8, 8192), CUDA0) is None




def test_each_family_finds_its_own_entries(table_dirs):
    _, shipped_dir = table_dirs
    mla = PAPER_SPECS["mla"]
    write_table(make_table([entry(mla, Bucket(1, 32768, 1), LatentHopperConfig(24), family="latent_hopper"),
                            entry(mla, Bucket(1, 32768, 1), PortableConfig(num_splits=7))]),
                shipped_dir / table_file.gpu_file_name(GPU))
    assert tuned_config(LATENT_HOPPER, mla, shape_of(1, 32768), CUDA0) == LatentHopperConfig(24)
    assert tuned_config(PORTABLE, mla, shape_of(1, 32768), CUDA0) == PortableConfig(num_splits=7)
    # A neighbouring bucket: twice the sequences, half the splits (the Hopper family's programs per split).
    assert tuned_config(LATENT_HOPPER, mla, shape_of(2, 32768), CUDA0) == LatentHopperConfig(12)


def test_shipped_tables_are_valid_and_current_or_known_stale():
    """Every table in tuned_configs/ passes the schema, and every family in it was tuned for its kernels as they
    are now, except where KNOWN_STALE names the table, the family and why (a kernel change without retuning
    would otherwise drop these entries silently at run time)."""
    paths = sorted(p for p in table_file.shipped_tables_dir().iterdir() if p.name.endswith(".json"))
    assert paths, "no shipped table"
    for path in paths:
        table = table_file.read_table(path)  # schema and entry checks
        assert table.entries
        assert set(table.stale_families) == set(KNOWN_STALE.get(path.name, {})), path.name
        for item in table.entries.values():
            assert item.tuned_us <= item.default_us * 1.05

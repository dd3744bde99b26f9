from __future__ import annotations

from pathlib import Path

import pytest

from primerl_modal.core.profile import (
    SearchPath,
    Setting,
    find_profile,
    normalise_key,
    parse_set,
    resolve,
)
from primerl_modal.errors import ProfileError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def search(tmp_path: Path) -> SearchPath:
    return SearchPath(tmp_path / "cwd", tmp_path / "home" / "profiles", tmp_path / "packaged")


def test_extends_deep_merges_child_wins_and_records_sources(search, tmp_path):
    write(tmp_path / "p" / "base.toml", '[gpu]\ntype = "H100"\ncount = 8\n[modal]\nretries = 5\n')
    child = write(tmp_path / "p" / "exp.toml",
                  'extends = "base.toml"\n[gpu]\ncount = 4\n[overrides.trainer.optim]\nlr = 1e-6\n')
    r = resolve(str(child), search, [Setting("gpu.tp", 2, "--tp")])
    assert r.get("gpu.type") == "H100" and r.get("gpu.count") == 4
    assert r.get("modal.retries") == 5
    assert r.get("modal.timeout") == "24h"  # built-in default
    assert r.get("gpu.tp") == 2
    assert r.get("experiment.name") == "exp"
    assert r.sources["gpu.count"].endswith("exp.toml")
    assert r.sources["gpu.type"].endswith("base.toml")
    assert r.sources["gpu.tp"] == "--tp"
    assert r.sources["modal.timeout"] == "default"
    assert r.get("overrides.trainer.optim.lr") == 1e-6


def test_extends_cycle_is_named(search, tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ProfileError, match=r"extends cycle: a.toml -> b.toml -> a.toml"):
        resolve(str(tmp_path / "a.toml"), search)


def test_extends_naming_a_folder_says_so(search, tmp_path):
    (tmp_path / "shared").mkdir()
    child = write(tmp_path / "exp.toml", 'extends = "shared"\n')
    with pytest.raises(ProfileError, match=r"extends 'shared' but .*/shared is a folder"):
        resolve(str(child), search)


def test_a_parent_that_is_not_utf8_is_named_with_its_byte_offset(search, tmp_path):
    (tmp_path / "base.toml").write_bytes(b'[wandb]\nproject = "r\xe9sum\xe9"\n')
    child = write(tmp_path / "exp.toml", 'extends = "base.toml"\n')
    with pytest.raises(ProfileError) as e:
        resolve(str(child), search)
    assert e.value.message == (f"{tmp_path / 'base.toml'}: not UTF-8 text: byte 0xe9 at "
                               "offset 20 (line 2)")


def test_malformed_toml_reports_file_line_and_column(search, tmp_path):
    bad = write(tmp_path / "bad.toml", '[gpu]\ncount = 8\ntype = H100\n')
    with pytest.raises(ProfileError) as e:
        resolve(str(bad), search)
    assert f"{bad}:3:" in e.value.one_line()
    assert "invalid TOML" in e.value.one_line()


def test_missing_profile_lists_every_path_tried(search):
    with pytest.raises(ProfileError) as e:
        find_profile("nope", search)
    line = e.value.one_line()
    for p in search.candidates("nope"):
        assert str(p) in line


def test_lookup_order_configs_then_home_then_packaged(search):
    packaged = write(search.packaged / "x.toml", "")
    assert find_profile("x", search) == packaged
    home = write(search.home_profiles / "x.toml", "")
    assert find_profile("x", search) == home
    local = write(search.cwd / "configs" / "x.toml", "")
    assert find_profile("x", search) == local


def test_unknown_section_says_did_you_mean(search, tmp_path):
    p = write(tmp_path / "t.toml", "[gpus]\ncount = 8\n")
    with pytest.raises(ProfileError, match=r"unknown section \[gpus\] \(did you mean 'gpu'\?\)"):
        resolve(str(p), search)


def test_unknown_key_in_section_says_did_you_mean(search, tmp_path):
    p = write(tmp_path / "t.toml", "[gpu]\ntrainer_ration = 0.3\n")
    with pytest.raises(ProfileError, match=r"did you mean 'trainer_ratio'"):
        resolve(str(p), search)


def test_wrong_type_names_key_and_file(search, tmp_path):
    p = write(tmp_path / "t.toml", '[gpu]\ncount = "eight"\n')
    with pytest.raises(ProfileError, match=r"t.toml: \[gpu\] count must be an integer"):
        resolve(str(p), search)


def test_secret_looking_env_is_refused(search, tmp_path):
    p = write(tmp_path / "t.toml", '[env]\nWANDB_API_KEY = "abc"\n')
    with pytest.raises(ProfileError, match="looks like a secret") as e:
        resolve(str(p), search)
    assert "abc" not in e.value.one_line()
    ok = write(tmp_path / "ok.toml", '[env]\nTOKENIZERS_PARALLELISM = "false"\n')
    assert resolve(str(ok), search).get("env") == {"TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("trainer.optim.lr=1e-5", "overrides.trainer.optim.lr", 1e-5),
        ("max_steps=50", "overrides.max_steps", 50),
        ("max-steps=50", "overrides.max_steps", 50),
        ("gpu.count=4", "gpu.count", 4),
        ("gpu.trainer-ratio=0.25", "gpu.trainer_ratio", 0.25),
        ("orchestrator.sampling.temp=1.0", "overrides.orchestrator.sampling.temp", 1.0),
        ("model.name=Qwen/Qwen3-4B", "overrides.model.name", "Qwen/Qwen3-4B"),
        ("trainer.model.compile=false", "overrides.trainer.model.compile", False),
        ("orchestrator.env_ids=[\"a\",\"b\"]", "overrides.orchestrator.env_ids", ["a", "b"]),
        ("overrides.gpu.x=1", "overrides.gpu.x", 1),
        ("env.HF_HUB_ENABLE_HF_TRANSFER=1", "env.HF_HUB_ENABLE_HF_TRANSFER", 1),
        ("wandb.project=\"my proj\"", "wandb.project", "my proj"),
        ("prime_rl.image=ghcr.io/o/prime-rl:commit-abc-amd64", "prime_rl.image",
         "ghcr.io/o/prime-rl:commit-abc-amd64"),
        ("prime_rl.uv-version=0.11.1", "prime_rl.uv_version", "0.11.1"),
    ],
)
def test_parse_set(item, key, value):
    s = parse_set(item)
    assert (s.key, s.value, s.source) == (key, value, "--set")


def test_set_without_equals_is_refused():
    with pytest.raises(ProfileError, match=r"--set 'trainer.optim.lr' has no '='"):
        parse_set("trainer.optim.lr")


@pytest.mark.parametrize("bad", ["gpu..count", ".x", "a b", "x=y"])
def test_malformed_set_keys_are_refused(bad):
    with pytest.raises(ProfileError, match="not a dotted name"):
        normalise_key(bad)


def test_unknown_prm_key_says_did_you_mean():
    with pytest.raises(ProfileError, match=r"unknown prm key 'gpu.cont' \(did you mean 'count'"):
        normalise_key("gpu.cont")


def test_cli_count_or_ratio_replaces_an_explicit_split_from_a_file(search, tmp_path):
    p = write(tmp_path / "t.toml", "[gpu]\ntrainer = 4\ninference = 4\n")
    r = resolve(str(p), search, [Setting("gpu.trainer_ratio", 0.25, "--trainer-ratio")])
    assert r.get("gpu.trainer") is None and r.get("gpu.inference") is None


def test_local_config_paths_are_anchored_to_the_file_that_names_them(search, tmp_path):
    p = write(tmp_path / "exps" / "t.toml", '[prime_rl]\nconfig = "./rl.toml"\n')
    r = resolve(str(p), search)
    assert r.get("prime_rl.config") == str(tmp_path / "exps" / "rl.toml")
    r2 = resolve(str(p), search, [parse_set('prime_rl.config="configs/x/rl.toml"')])
    assert r2.get("prime_rl.config") == "configs/x/rl.toml"  # inside the prime-rl checkout


def test_a_prebuilt_image_is_a_reference_not_a_local_path(search, tmp_path):
    tag = "ghcr.io/primeintellect-ai/prime-rl:commit-abc-amd64"
    p = write(tmp_path / "exps" / "t.toml", f'[prime_rl]\nimage = "{tag}"\n')
    assert resolve(str(p), search).get("prime_rl.image") == tag
    r = resolve(str(p), search, [parse_set("prime_rl.image=ghcr.io/x/y:z")])
    assert r.get("prime_rl.image") == "ghcr.io/x/y:z"
    bad = write(tmp_path / "bad.toml", "[prime_rl]\nimage = 3\n")
    with pytest.raises(ProfileError, match=r"\[prime_rl\] image must be a string"):
        resolve(str(bad), search)

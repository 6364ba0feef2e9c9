
import pytest

from conftest import ROOT, bin_path, run
from posttrain.config import ConfigError, Params, load_params


def test_params_yaml_is_the_valid_demo_default():
    params = load_params([ROOT / "params.yaml"])
    assert params.model.base == "embedded:smollm2-135m-instruct"
    assert all(params.data.sources.of(k) for k in ("sft", "preference", "prompts", "eval"))


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates_as_overlay(recipe):
    params = load_params([ROOT / "params.yaml", recipe])
    assert isinstance(params, Params)


def test_production_recipe_overlays_only_what_it_sets():
    params = load_params([ROOT / "params.yaml", ROOT / "recipes" / "qwen3-30b-a3b.yaml"])
    assert params.model.base == "Qwen/Qwen3-30B-A3B-Base"
    assert params.model.chat_template == "qwen3"
    assert params.data.cleaning.max_tokens == 4096
    # untouched keys keep the demo value
    assert params.data.cleaning.pii == "scrub"
    assert all(s.path.startswith("hf:")
               for k in ("sft", "preference", "prompts", "eval") for s in params.data.sources.of(k))


def test_unknown_key_is_named_with_file_and_allowed_keys(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("data:\n  cleaning:\n    near_dup_treshold: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_params([ROOT / "params.yaml", bad])
    msg = str(err.value)
    assert "data.cleaning.near_dup_treshold" in msg
    assert str(bad) in msg
    assert "near_dup_threshold" in msg  # the allowed keys are listed


def test_wrong_type_and_out_of_range_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  val_fraction: lots\n  cleaning:\n    max_tokens: 2\nmodel:\n  dtype: int3\n")
    with pytest.raises(ConfigError) as err:
        load_params([ROOT / "params.yaml", bad])
    msg = str(err.value)
    for key in ("data.val_fraction", "data.cleaning.max_tokens", "model.dtype"):
        assert key in msg
    assert "'float32'" in msg  # what is allowed


def test_unknown_section_and_kind_and_format(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sftt: {}\ndata:\n  sources:\n    rl: []\n    sft: [{path: x.jsonl, format: alpacca}]\n")
    with pytest.raises(ConfigError) as err:
        load_params([bad])
    msg = str(err.value)
    assert "unknown key 'sftt'" in msg
    assert "unknown key 'data.sources.rl'" in msg and "allowed here: eval, preference, prompts, sft" in msg
    assert "unknown format 'alpacca'" in msg


def test_cli_check_params_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  bsae: x\n")
    res = run([bin_path("posttrain"), "check-params", "--params", str(ROOT / "params.yaml"), "--params", str(bad)],
              ROOT, check=False)
    assert res.returncode == 2
    assert "model.bsae" in res.stderr


def test_cli_check_params_prints_resolved_values():
    res = run([bin_path("posttrain"), "check-params"], ROOT)
    assert "base: embedded:smollm2-135m-instruct" in res.stdout


def test_rl_seed_reseeds_every_rl_stage_that_sets_none(tmp_path):
    # a seeded repeat is one key (`dvc exp run -S rl.seed=1`), not one per stage
    overlay = tmp_path / "seed.yaml"
    overlay.write_text("rl:\n  seed: 5\n")
    params = load_params([ROOT / "params.yaml", overlay])
    assert [st.seed for st in params.rl.stages] == [5, 5, 5] and params.rl.zero.seed == 5
    overlay.write_text("rl:\n  seed: 5\n  stages:\n"
                       "    - {name: helpfulness, subsets: [helpful], rewards: [{name: repetition}], seed: 7}\n")
    assert [st.seed for st in load_params([ROOT / "params.yaml", overlay]).rl.stages] == [7]
    assert [st.seed for st in load_params([ROOT / "params.yaml"]).rl.stages] == [0, 0, 0]

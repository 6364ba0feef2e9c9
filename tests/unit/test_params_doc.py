"""docs/params.md is generated from the schema, and every key of the schema is documented."""

import pytest

from conftest import ROOT
from posttrain.config import ConfigError
from posttrain.config.docs import DOC_PATH, explain, keys, params_markdown


def test_params_md_is_up_to_date():
    doc = ROOT / DOC_PATH
    assert doc.exists(), f"{DOC_PATH} is missing: run `posttrain check-params --write-docs`"
    assert doc.read_text() == params_markdown(), (
        f"{DOC_PATH} differs from the schema in src/posttrain/config/: run `posttrain check-params --write-docs`")


def test_every_key_has_a_description():
    missing = [k.dotted for k in keys() if not (k.field.description or "").strip()]
    assert not missing, f"keys without Field(description=...): {missing}"


def test_every_key_is_in_the_reference():
    """Each section has a heading and each key a row, or sits under a key whose row points to the
    same keys elsewhere (rl.zero: the keys of rl.stages[])."""
    doc = params_markdown()
    rows = {line.split("`")[1]: line for line in doc.splitlines() if line.startswith("| `")}

    def covered(dotted: str) -> bool:
        if dotted in rows or "." not in dotted and f"\n## {dotted}\n" in doc:
            return True
        parts = dotted.split(".")
        prefixes = [".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]
        return any(p.removesuffix("[]") in rows and "Same keys as" in rows[p.removesuffix("[]")] for p in prefixes)

    assert [k.dotted for k in keys() if not covered(k.dotted)] == []
    assert "rl.stages[].ppo.critic" in rows and "reward.aspects.<name>.subsets" in rows


@pytest.mark.parametrize(("key", "canonical", "expected"), [
    ("sft.lora.r", "sft.lora.r", ["type:    int >= 1", "default: 16", "Rank"]),
    ("rl.stages.ppo.critic", "rl.stages[].ppo.critic", ["type:    str or null", "default: null", "critic"]),
    ("rl.stages[0].ppo.critic_base", "rl.stages[].ppo.critic_base", ["allowed: auto, shared, copy"]),
    ("reward.aspects.helpful.subsets", "reward.aspects.<name>.subsets", ["default: (required)"]),
    ("model.dtype", "model.dtype", ["allowed: auto, float32, bfloat16, float16", "default: auto"]),
    ("data.sources.sft.0.format", "data.sources.sft[].format", ["allowed: auto, ", "sharegpt"]),
    ("export", "export", ["default: null", "keys:    model, dtype, formats"]),
])
def test_explain_describes_one_key(key, canonical, expected):
    text = explain(key)
    assert text.splitlines()[0] == canonical
    for part in expected:
        assert part in text


def test_explain_names_close_matches_of_a_typo():
    with pytest.raises(ConfigError) as err:
        explain("data.cleaning.near_dup_treshold")
    assert "unknown key 'data.cleaning.near_dup_treshold'" in str(err.value)
    assert "data.cleaning.near_dup_threshold" in str(err.value)
    with pytest.raises(ConfigError, match=r"close matches: rl\.stages\[\]\.ppo\.critic"):
        explain("rl.stages.ppo.critc")


def test_explain_lists_the_keys_when_nothing_is_close():
    with pytest.raises(ConfigError, match="keys under 'sft.lora': r, alpha, dropout"):
        explain("sft.lora.zzzzzz")

"""The quantization release gate: export.max_loss per metric, checked by export_check, marked by
the report, and a stop with export.gate: fail."""

import json
from pathlib import Path

import pytest

from posttrain.config import ConfigError, load_params
from posttrain.core.manifest import write_json, write_manifest
from posttrain.stages import report
from posttrain.stages.export.check import GateFailed, check, gate

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"arithmetic_accuracy": 0.02, "perplexity": 0.10, "harmful_refusal_rate": 0.05}


def _folder(path: Path, stage: str, mb: int = 0, metrics: dict | None = None, model: str = "") -> Path:
    path.mkdir(parents=True)
    if mb:
        (path / "model.safetensors").write_bytes(b"\0" * (mb * 2**20))
    if metrics is not None:
        write_json(path / "metrics.json", {"model": model, "metrics": metrics})
    write_manifest(path, stage=stage, params={}, seed=0)
    return path


def _params(tmp_path, **export):
    overlay = tmp_path / "gate.yaml"
    overlay.write_text(json.dumps({"export": export}))
    return load_params([ROOT / "params.yaml", overlay])


def test_a_lossy_export_fails_its_gate_and_a_faithful_one_passes(tmp_path):
    merged = _folder(tmp_path / "export" / "sft" / "merged", "export-merge", mb=4)
    ref = {"arithmetic_accuracy": 0.30, "perplexity": 3.0, "harmful_refusal_rate": 0.20, "parameters": 1}
    lossy = {"arithmetic_accuracy": 0.04, "perplexity": 3.6, "harmful_refusal_rate": 0.19, "parameters": 1}
    faithful = {"arithmetic_accuracy": 0.29, "perplexity": 3.1, "harmful_refusal_rate": 0.22, "parameters": 1}
    exports = {"gptq": _folder(tmp_path / "export" / "sft" / "gptq", "export-gptq", mb=1),
               "gguf": _folder(tmp_path / "export" / "sft" / "gguf", "export-gguf", mb=2)}
    evals = {fmt: _folder(tmp_path / "eval" / f"sft_{fmt}", f"evaluate:sft_{fmt}", metrics=m, model=f"sft_{fmt}")
             for fmt, m in (("gptq", lossy), ("gguf", faithful))}
    source = _folder(tmp_path / "eval" / "sft", "evaluate:sft", metrics=ref, model="sft")
    out = tmp_path / "export" / "sft" / "check"
    cfg = _params(tmp_path, max_loss=LIMITS).export
    metrics = check(merged, exports, source, evals, out, cfg)

    assert metrics["gate_passed_gptq"] is False and metrics["gate_passed_gguf"] is True
    gates = json.loads((out / "gate.json").read_text())
    assert gates["gptq"]["metrics"]["arithmetic_accuracy"] == {"loss": 0.26, "max_loss": 0.02, "passed": False}
    assert gates["gptq"]["metrics"]["perplexity"]["loss"] == pytest.approx(0.2)      # relative: +20 %
    assert gates["gptq"]["metrics"]["harmful_refusal_rate"]["passed"] is True       # 1 point, 5 allowed
    assert gates["gguf"]["metrics"]["harmful_refusal_rate"]["loss"] == pytest.approx(-0.02)   # better
    assert [f.split(" lost")[0] for f in gates["gptq"]["failures"]] == ["arithmetic_accuracy", "perplexity"]
    card = (out / "README.md").read_text()
    assert "| gguf | 0.5 |" in card and "| pass |" in card
    assert "**fail**: arithmetic_accuracy lost 0.26, at most 0.02 allowed (0.3 -> 0.04)" in card

    # the report marks the failing export, says why, and leaves the passing one alone
    page = report.main([source, evals["gptq"], evals["gguf"]], [], tmp_path / "report", export_checks=[out])
    md = (tmp_path / "report" / "report.md").read_text()
    assert set(page) == {"sft", "sft_gptq", "sft_gguf"}
    assert "| sft_gptq (fails its release gate) |" in md and "| sft_gguf |" in md
    assert "sft_gptq fails its release gate (export.max_loss): arithmetic_accuracy lost 0.26" in md
    assert "fails its release gate" in (tmp_path / "report" / "report.html").read_text()

    # gate: fail stops the stage, naming the format and the metric, with the check on record
    with pytest.raises(GateFailed, match=r"export gptq fails its release gate .*arithmetic_accuracy lost 0\.26"):
        check(merged, {"gptq": exports["gptq"]}, source, {"gptq": evals["gptq"]}, out,
              _params(tmp_path, max_loss=LIMITS, gate="fail").export)
    assert (out / "gate.json").is_file()


def test_a_gate_is_unchecked_where_nothing_was_measured_and_fails_where_one_side_was():
    ref, got = {"perplexity": 3.0}, {"perplexity": 3.0, "gsm8k_exact_match": 0.5}
    result = gate(ref, got, {"perplexity": 0.1, "arithmetic_accuracy": 0.02, "gsm8k_exact_match": 0.02})
    assert result["metrics"]["arithmetic_accuracy"]["passed"] is None            # neither evaluation has it
    assert result["metrics"]["perplexity"]["passed"] is True
    assert result["failures"] == ["gsm8k_exact_match was evaluated for one of the two models only"]
    assert gate(ref, got, {}) == {"passed": True, "failures": [], "metrics": {}}


def test_gate_limits_name_metrics_with_a_direction(tmp_path):
    with pytest.raises(ConfigError, match="no direction is known for accuracy_typo"):
        _params(tmp_path, max_loss={"accuracy_typo": 0.1})
    with pytest.raises(ConfigError, match="perplexity: a loss limit is >= 0"):
        _params(tmp_path, max_loss={"perplexity": -0.1})

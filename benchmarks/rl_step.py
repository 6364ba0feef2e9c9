"""Where a GRPO step's time goes, measured side by side in one run.

    .venv/bin/python benchmarks/rl_step.py                                   # tiny random model
    .venv/bin/python benchmarks/rl_step.py --model results/sft/merged --prompts results/data/prompts

Prints:
  1. generation of the same sampled batch with the LoRA adapter unmerged (what GRPOTrainer does
     by default) and merged into the weights (what the RL stage does), and their ratio;
  2. one RL stage's steps split into generation, reward scoring and the rest (log-probabilities,
     backward pass, optimizer), as shares of the step time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _tiny(tmp: Path) -> tuple[Path, Path]:
    """A tiny random model and a prepared prompt set, as the tests build them."""
    from conftest import TINY_OVERLAY, write_jsonl
    from posttrain.config import load_params
    from posttrain.stages import base_model, prepare_data

    base = tmp / "base"
    base_model.main(load_params([ROOT / "params.yaml", TINY_OVERLAY]), base)
    rows = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b), "subset": "arithmetic"}
            for a in range(2, 30) for b in (3, 5)]
    params = load_params([ROOT / "params.yaml", TINY_OVERLAY])
    params.data.cleaning.near_dup = False
    prepare_data.main(params, "prompts", [str(write_jsonl(tmp / "p.jsonl", rows))], tmp / "prompts", tokenizer_dir=base)
    return base, tmp / "prompts"


def generation(model_dir: Path, prompts_dir: Path, n: int, tokens: int, lora_layers: int | None) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.models import weights_dir
    from posttrain.stages.rl import merged_adapter

    model_dir = weights_dir(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    rows = [json.loads(line) for line in open(prompts_dir / "train.jsonl")][:n]
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers - lora_layers, n_layers)) if lora_layers else None
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, layers_to_transform=layers,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))

    def timed() -> float:
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():  # the same work every time: exactly `tokens` new tokens per row
            model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, temperature=0.8,
                           pad_token_id=tok.pad_token_id)
        return time.perf_counter() - start

    timed()  # warm-up
    unmerged = timed()
    with merged_adapter(model):
        merged = timed()
    print(f"generation, {len(rows)} rows x {tokens} tokens: unmerged LoRA {unmerged:.2f} s, merged {merged:.2f} s, "
          f"ratio {unmerged / merged:.2f}")


def step_breakdown(model_dir: Path, prompts_dir: Path, steps: int, overlay: dict) -> None:
    from posttrain.config import load_params
    from posttrain.stages import rl

    from trl import GRPOTrainer

    spent = {"generation": 0.0, "scoring": 0.0}
    cls = GRPOTrainer  # the stage's trainer subclasses it and calls these through super()

    def clocked(method, key):
        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
        return wrapper

    cls._generate_single_turn = clocked(cls._generate_single_turn, "generation")
    cls._calculate_rewards = clocked(cls._calculate_rewards, "scoring")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overlay.json"
        st = {"name": "bench", "subsets": ["arithmetic"], "rewards": [{"name": "accuracy"}], "max_steps": steps,
              "save_steps": steps, **overlay}
        path.write_text(json.dumps({"rl": {"stages": [st], "selection_prompts": 1, "checkpoint_dir": tmp}}))
        params = load_params([ROOT / "params.yaml", path])
        start = time.perf_counter()
        trainer_steps = _train(rl, params, model_dir, prompts_dir, Path(tmp))
        total = time.perf_counter() - start
    rest = total - spent["generation"] - spent["scoring"]
    print(f"GRPO, {trainer_steps} steps of {st.get('prompts_per_step', 4)} prompts x {st.get('num_generations', 4)} "
          f"completions, {total:.1f} s in all (incl. held-out scoring and saving): generation "
          f"{spent['generation'] / total:.0%}, reward scoring {spent['scoring'] / total:.0%}, "
          f"log-probs + backward + optimizer + the rest {rest / total:.0%}")


def _train(rl, params, model_dir: Path, prompts_dir: Path, tmp: Path) -> int:
    rl.main(params, "bench", model_dir, prompts_dir, {}, tmp / "out")
    return json.loads((tmp / "out" / "metrics.json").read_text())["steps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a stage's model folder, e.g. results/sft (default: a tiny random model)")
    ap.add_argument("--prompts", type=Path, help="prepared prompts (results/data/prompts)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lora-layers", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        model, prompts = (args.model, args.prompts) if args.model else _tiny(Path(tmp))
        for layers in sorted({None, args.lora_layers}, key=lambda n: n or 0):
            print(f"LoRA on {'every layer' if layers is None else f'the top {layers} layers'}:")
            generation(model, prompts, args.rows, args.tokens, layers)
        step_breakdown(model, prompts, args.steps, {"max_completion_length": args.tokens, "beta": 0.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())

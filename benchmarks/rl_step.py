"""Where a GRPO step's and a PPO step's time goes, measured side by side in one run.

    .venv/bin/python benchmarks/rl_step.py                                   # tiny random model
    .venv/bin/python benchmarks/rl_step.py --model results/sft --prompts results/data/prompts \
        --reward results/reward/helpful --lora-layers 8

Prints:
  1. generation of the same sampled batch with the LoRA adapter unmerged (what GRPOTrainer does
     by default) and merged into the weights (what the RL stage does), and their ratio;
  2. a GRPO stage's steps split into generation, reward scoring and the rest (log-probabilities,
     backward pass, optimizer), as shares of the stage's time;
  3. a PPO stage's (posttrain.rl.ppo) split into generation, reward scoring (the reward model and
     the rule rewards), the rollout's log-probabilities / reference / values, the PPO updates, and
     the rest (held-out selection scoring, saving). Without --reward, a tiny reward model is
     trained first (its quality does not matter: it scores and seeds the critic).
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

    from posttrain.inference.generation import merged_adapter
    from posttrain.models.sources import weights_dir

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


def _clocked(fn, spent: dict, key: str, inside: dict | None = None, flag: str | None = None,
             only_in: str | None = None):
    """`fn`, adding its run time to spent[key]. `flag`: marks inside[flag] while it runs;
    `only_in`: counts only calls made while inside[only_in] is marked."""
    def wrapper(*args, **kwargs):
        if only_in and not inside[only_in]:
            return fn(*args, **kwargs)
        if flag:
            inside[flag] = True
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start
            if flag:
                inside[flag] = False
    return wrapper


def _run_stage(st: dict, lora_layers: int | None, model_dir: Path, prompts_dir: Path,
               reward_dirs: dict[str, Path], precision: str = "auto") -> tuple[float, int]:
    """Runs the RL stage `st` (merged into the demo params, rl.precision `precision`) and returns
    (seconds, steps)."""
    from posttrain.config import load_params
    from posttrain.stages import rl

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overlay.json"
        path.write_text(json.dumps({"rl": {"stages": [st], "selection_prompts": 1, "checkpoint_dir": tmp,
                                           "lora": {"layers": lora_layers}, "precision": precision}}))
        params = load_params([ROOT / "params.yaml", path])
        start = time.perf_counter()
        rl.main(params, st["name"], model_dir, prompts_dir, reward_dirs, Path(tmp) / "out")
        total = time.perf_counter() - start
        return total, json.loads((Path(tmp) / "out" / "metrics.json").read_text())["steps"]


def step_breakdown(model_dir: Path, prompts_dir: Path, steps: int, overlay: dict, lora_layers: int | None) -> None:
    from trl import GRPOTrainer

    spent = {"generation": 0.0, "scoring": 0.0}
    cls = GRPOTrainer  # the stage's trainer subclasses it and calls these through super()
    cls._generate_single_turn = _clocked(cls._generate_single_turn, spent, "generation")
    cls._calculate_rewards = _clocked(cls._calculate_rewards, spent, "scoring")
    st = {"name": "bench", "subsets": ["arithmetic"], "rewards": [{"name": "accuracy"}], "max_steps": steps,
          "save_steps": steps, **overlay}
    total, trainer_steps = _run_stage(st, lora_layers, model_dir, prompts_dir, {})
    rest = total - spent["generation"] - spent["scoring"]
    print(f"GRPO, {trainer_steps} steps of {st.get('prompts_per_step', 4)} prompts x {st.get('num_generations', 4)} "
          f"completions, {total:.1f} s in all (incl. held-out scoring and saving): generation "
          f"{spent['generation'] / total:.0%}, reward scoring {spent['scoring'] / total:.0%}, "
          f"log-probs + backward + optimizer + the rest {rest / total:.0%}")


def ppo_breakdown(model_dir: Path, prompts_dir: Path, reward_dir: Path, steps: int, tokens: int,
                  lora_layers: int | None) -> None:
    from posttrain.rl import ppo

    spent = {"generation": 0.0, "scoring": 0.0, "rollout": 0.0, "step": 0.0}
    inside = {"rollout": False}
    cls = ppo.PpoTrainer
    init = cls.__init__

    def instrumented_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.reward_fn = _clocked(self.reward_fn, spent, "scoring")
        # generation outside a rollout is the held-out selection: counted with the rest
        self.model.generate = _clocked(self.model.generate, spent, "generation", inside, only_in="rollout")

    cls.__init__ = instrumented_init
    cls._rollout = _clocked(cls._rollout, spent, "rollout", inside, flag="rollout")
    cls.step = _clocked(cls.step, spent, "step")
    st = {"name": "bench", "algorithm": "ppo", "subsets": ["arithmetic"], "max_steps": steps, "save_steps": steps,
          "rewards": [{"name": "reward_model", "aspect": "helpful"}, {"name": "accuracy"}],
          "max_completion_length": tokens, "prompts_per_step": 4, "num_generations": 4,
          "ppo": {"epochs": 2, "mini_batches": 2}}
    total, _ = _run_stage(st, lora_layers, model_dir, prompts_dir, {"helpful": reward_dir})
    logprobs = spent["rollout"] - spent["generation"] - spent["scoring"]
    updates = spent["step"] - spent["rollout"]
    rest = total - spent["step"]
    print(f"PPO, {steps} steps of {st['prompts_per_step']} prompts x {st['num_generations']} completions, "
          f"{total:.1f} s in all: generation "
          f"{spent['generation'] / total:.0%}, reward scoring {spent['scoring'] / total:.0%}, rollout log-probs + "
          f"reference + values {logprobs / total:.0%}, PPO updates (2 epochs x 2 mini-batches) {updates / total:.0%}, "
          f"the rest (model loading, held-out selection, saving) {rest / total:.0%}")


def _tiny_reward_model(tmp: Path, base: Path) -> Path:
    from conftest import train_tiny_reward_model

    rows = [{"prompt": f"What is {a} plus 3?", "chosen": f"{a} plus 3 is {a + 3}.", "rejected": "No.",
             "subset": "helpful"} for a in range(2, 30)]
    return train_tiny_reward_model(tmp, base, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path,
                    help="a stage's model folder, e.g. results/sft (default: a tiny random model)")
    ap.add_argument("--prompts", type=Path, help="prepared prompts (results/data/prompts)")
    ap.add_argument("--reward", type=Path, help="a reward model for PPO's critic and scoring (results/reward/helpful)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lora-layers", type=int, default=None,
                    help="LoRA on the top N layers (the demo's rl.lora.layers is 8); default: every layer")
    args = ap.parse_args()
    if args.model and not args.reward:
        ap.error("--model needs --reward (a reward model trained for it, e.g. results/reward/helpful)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        model, prompts = (args.model, args.prompts) if args.model else _tiny(Path(tmp))
        for layers in sorted({None, args.lora_layers}, key=lambda n: n or 0):
            print(f"LoRA on {'every layer' if layers is None else f'the top {layers} layers'}:")
            generation(model, prompts, args.rows, args.tokens, layers)
        step_breakdown(model, prompts, args.steps, {"max_completion_length": args.tokens, "beta": 0.0},
                       args.lora_layers)
        rm = args.reward or _tiny_reward_model(Path(tmp), model)
        ppo_breakdown(model, prompts, rm, args.steps, args.tokens, args.lora_layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""RL stage: one stage of `rl.stages` (or the RL-first `rl.zero`) with TRL's GRPOTrainer
(`algorithm: grpo`), posttrain's PPO with a critic (`algorithm: ppo`, posttrain.rl.ppo) or
rejection-sampling fine-tuning (`algorithm: rejection_sampling`: the init model's answers that
the rewards accept, trained on with TRL's SFTTrainer).

    posttrain rl --stage reasoning --init results/sft --prompts results/data/prompts \\
        [--reward helpful=results/reward/helpful ...] --out results/rl/reasoning [--params ...]

The policy is a LoRA adapter on the init model; the KL reference is the same weights with the
adapter switched off. Rewards are registry functions (posttrain.verifiers.rewards) with weights, reward
models among them. Every `save_steps` the policy answers the stage's held-out prompts greedily
and is scored with the same rewards; the best checkpoint, step 0 (the init model) included,
becomes the stage's model. Guards: a reward function that raises or returns NaN/inf, or a
non-finite loss or reward, stops the stage before anything is promoted; a reward function that
returns None for a whole batch is logged and counted.

Writes adapter/ (the chosen checkpoint), merged/ (init + adapter, what the next stage and the
evaluation load), metrics.json, selection.json, log.csv, curves.png, README.md and manifest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import torch

from posttrain.config import Params, RlStageParams
from posttrain.core import checkpoints
from posttrain.core.commands import pairs_arg, params_arg
from posttrain.core.manifest import input_hash, require_manifest, write_json, write_manifest, write_metrics
from posttrain.inference.generation import sampling_weights
from posttrain.models import chat
from posttrain.models.head import contiguous_head_input
from posttrain.rl import rejection_sampling, reward_terms, selection
from posttrain.rl.prompts import prompt_rows
from posttrain.rl.reward_terms import combined, guarded, reward_spec
from posttrain.rl.selection import Selection
from posttrain.training import trainers as training
from posttrain.verifiers import rewards

log = logging.getLogger(__name__)
LOG_COLUMNS = {"loss": "loss", "reward": "reward", "reward_std": "reward_std", "kl": "kl",
               "completion_length": "completions/mean_length", "entropy": "entropy",
               "learning_rate": "learning_rate", "heldout_reward": "heldout_reward"}
PPO_LOG_COLUMNS = {"value_loss": "value_loss", "clip_fraction": "clip_fraction", "approx_kl": "approx_kl",
                   "explained_variance": "explained_variance", "kl_coef": "kl_coef"}


def stage_params(params: Params, name: str) -> RlStageParams:
    if name == "zero":
        if params.rl.zero is None:
            raise ValueError("rl.zero is not set: the RL-first path is off in these params")
        return params.rl.zero
    for st in params.rl.stages:
        if st.name == name:
            return st
    raise ValueError(f"rl.stages has no stage {name!r}; defined: {[s.name for s in params.rl.stages] or 'none'}")


def stage_section(params: Params, st: RlStageParams) -> dict:
    """What the stage's result depends on: the shared settings and its own entry."""
    shared = params.rl.model_dump(mode="json", exclude={"stages", "zero"})
    return {**shared, "stage": st.model_dump(mode="json")}


def main(params: Params, stage: str, init_dir: Path, prompts_dir: Path, reward_dirs: dict[str, Path],
         out: Path) -> dict:
    from transformers import AutoModelForCausalLM, set_seed

    cfg, st = params.rl, stage_params(params, stage)
    weights, tokenizer = training.init_model(init_dir, f"the init model of rl stage {stage!r}")
    require_manifest(prompts_dir, "prepare-data --kind prompts")
    precision = training.resolve_precision(cfg.precision)

    # 1. Prompts of the stage's subsets, and its rewards (guarded).
    train = prompt_rows(prompts_dir / "train.jsonl", st.subsets, st.system_prompt)
    heldout = prompt_rows(prompts_dir / "val.jsonl", st.subsets, st.system_prompt)[: cfg.selection_prompts]
    if not train or not heldout:
        raise ValueError(f"rl stage {stage!r}: {len(train)} training and {len(heldout)} held-out prompts with subset "
                         f"in {st.subsets} under {prompts_dir}")
    none_batches: Counter = Counter()  # training batches only; held-out scoring counts apart
    # reward models score in the dtype the policy samples in (bfloat16 on a CPU with bf16 instructions)
    scoring_dtype = "bfloat16" if precision["sampling_dtype"] == torch.bfloat16 else "auto"
    built = [rewards.build(reward_spec(r, reward_dirs, scoring_dtype)) for r in st.rewards]
    funcs = [guarded(f, none_batches) for f in built]
    scoring_funcs = [guarded(f, Counter()) for f in built]
    weights_ = [r.weight for r in st.rewards]

    # 2. Checkpoints per (stage, params, inputs, code).
    inputs = {"init": init_dir, "prompts": prompts_dir, **{f"reward:{a}": d for a, d in sorted(reward_dirs.items())}}
    run_dir = checkpoints.run_dir(cfg.checkpoint_dir, f"rl-{stage}", stage_section(params, st),
                                  {**inputs, **checkpoints.code_inputs(__file__, training, rewards, reward_terms,
                                                                       selection)})
    resume = checkpoints.latest_complete(run_dir)
    log.info("rl stage %s from %s: %d prompts, %d held out; checkpoints in %s%s", stage, init_dir, len(train),
             len(heldout), run_dir, f"; resuming from {resume.name}" if resume else "")

    # 3. Policy, trainer, selection, training.
    set_seed(st.seed)
    # PPO runs in this one process: on a GPU node its model is spread over the visible GPUs
    # (accelerate's device map); GRPO's trainer places the model itself.
    placement = {"device_map": "auto"} if st.algorithm == "ppo" and torch.cuda.is_available() else {}
    # the head's input made contiguous: a frozen LM head otherwise multiplies by a copy per row
    # (posttrain.models.head), in the rollouts' first token and in every log-probability pass
    model = contiguous_head_input(AutoModelForCausalLM.from_pretrained(weights, dtype=precision["dtype"], **placement))
    selector = Selection(run_dir, heldout, scoring_funcs, weights_, tokenizer, st, precision["sampling_dtype"])
    sampled = None
    if st.algorithm == "ppo":
        trainer = _build_ppo_trainer(model, tokenizer, train, funcs, weights_, run_dir, cfg, st, precision, selector,
                                     reward_dirs, init_dir)
    elif st.algorithm == "rejection_sampling":
        sampled = _rejection_samples(model, tokenizer, train, funcs, weights_, run_dir / "samples", st)
        trainer = _build_rft_trainer(model, tokenizer, sampled, run_dir, cfg, st, precision, selector)
    else:
        trainer = _build_trainer(model, tokenizer, train, funcs, weights_, run_dir, cfg, st, precision, selector)
    trainable, total = training.count_parameters(trainer.model)
    selector.score_if_missing(trainer.model, step=0)
    _, elapsed = training.train_or_restore(trainer, resume)
    selector.score_if_missing(trainer.model, step=trainer.state.global_step)

    # 4. The chosen checkpoint, outputs replaced whole, by the main process; manifest last.
    if not training.fresh_output_dir(out):
        return {}
    chosen_step, chosen_dir = selector.best()
    history = [*trainer.state.log_history, *({"step": s, "heldout_reward": v} for s, v in selector.scores.items())]
    ppo = st.algorithm == "ppo"
    rows = training.write_log_csv(history, out / "log.csv", {**LOG_COLUMNS, **(PPO_LOG_COLUMNS if ppo else {})})
    panels = ([["heldout_reward"], ["loss"], ["learning_rate"]] if sampled else     # fine-tuning on samples
              [["reward", "heldout_reward"], ["kl"], ["completion_length"], ["entropy"]]
              + ([["value_loss"], ["clip_fraction", "approx_kl"]] if ppo else []))
    training.plot_curves(rows, out / "curves.png", f"RL stage {stage} ({st.algorithm})", panels)
    write_json(out / "selection.json", {"scores": {str(k): v for k, v in sorted(selector.scores.items())},
                                        "chosen_step": chosen_step})
    if st.system_prompt:  # the model is served and evaluated under the prompt it was trained with
        tokenizer.chat_template = chat.with_default_system(tokenizer.chat_template, st.system_prompt)
    _save_models(chosen_dir, weights, tokenizer, out)
    metrics = _metrics(rows, selector, chosen_step, trainer, elapsed, trainable, total, none_batches, st, resume,
                       sampled)
    metrics = write_metrics(out, metrics)
    _write_model_card(out, stage, init_dir, st, metrics)
    return write_manifest(out, stage=f"rl:{stage}", params=stage_section(params, st), seed=st.seed, inputs=inputs,
                          chat_template=tokenizer.chat_template,
                          extra={"checkpoints": str(run_dir), "metrics": metrics})


# --- trainer and outputs -----------------------------------------------------------------------


def _grpo_trainer_class():
    from trl import GRPOTrainer

    class MergedGenerationGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose transformers generation runs on merged LoRA weights, in the training
        precision's sampling dtype (one process; vLLM has its own weight sync)."""

        sampling_dtype = None

        def _generate_single_turn(self, *args, **kwargs):
            if self.use_vllm or self.accelerator.num_processes > 1:
                return super()._generate_single_turn(*args, **kwargs)
            with sampling_weights(self.accelerator.unwrap_model(self.model), self.sampling_dtype):
                return super()._generate_single_turn(*args, **kwargs)

    return MergedGenerationGRPOTrainer


def _build_trainer(model, tokenizer, train: list[dict], funcs, weights, run_dir: Path, cfg, st: RlStageParams,
                   precision: dict, selector: Selection):
    from datasets import Dataset
    from trl import GRPOConfig

    args = GRPOConfig(
        **training.training_kwargs(cfg, precision, run_dir),
        max_steps=st.max_steps, learning_rate=st.learning_rate, save_steps=st.save_steps,
        # one generation batch of prompts x generations per optimiser step, trained in micro-batches
        per_device_train_batch_size=st.per_device_batch(training.processes()),
        gradient_accumulation_steps=st.micro_batches, steps_per_generation=st.micro_batches,
        num_generations=st.num_generations, max_completion_length=st.max_completion_length,
        temperature=st.temperature, beta=st.beta, loss_type=st.loss_type, reward_weights=weights,
        mask_truncated_completions=st.mask_truncated_completions, scale_rewards=st.scale_rewards,
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode, vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size, vllm_enable_sleep_mode=cfg.vllm_enable_sleep_mode,
        eval_strategy="no", log_completions=False,
    )
    trainer = _grpo_trainer_class()(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(train),
                                    processing_class=tokenizer, callbacks=[*training.callbacks(cfg), selector],
                                    peft_config=training.lora_config(model, cfg.lora_for(st), "CAUSAL_LM", "rl")
                                    if cfg.method != "full" else None)
    trainer.sampling_dtype = precision["sampling_dtype"]
    return trainer


def _build_ppo_trainer(model, tokenizer, train: list[dict], funcs, weights, run_dir: Path, cfg, st: RlStageParams,
                       precision: dict, selector: Selection, reward_dirs: dict[str, Path], init_dir: Path):
    """The policy (a fresh LoRA on the init model) and the critic (the stage's reward model, its
    LoRA and score head trainable; on the policy's own weights when `ppo.critic_base` allows) for
    posttrain.rl.ppo."""
    from peft import get_peft_model

    from posttrain.models import reward_model
    from posttrain.rl.ppo import PpoTrainer
    from posttrain.rl.ppo_critic import AdapterCritic, RewardModelCritic

    if cfg.method != "lora":
        raise ValueError(f"rl stage {st.name!r}: PPO trains LoRA adapters (rl.method: lora); got {cfg.method!r}")
    aspect = st.ppo.critic or next(r.aspect for r in st.rewards if r.aspect)
    if aspect not in reward_dirs:
        raise ValueError(f"rl stage {st.name!r}: the PPO critic starts from the {aspect!r} reward model, but none was "
                         f"given (--reward {aspect}=results/reward/{aspect}); given: {sorted(reward_dirs)}")
    rm_dir = Path(reward_dirs[aspect])
    shareable = (rm_dir / "adapter").is_dir() and \
        require_manifest(rm_dir, "reward")["inputs"]["init"]["sha256"] == input_hash(init_dir)
    if st.ppo.critic_base == "shared" and not shareable:
        raise ValueError(f"rl stage {st.name!r}: ppo.critic_base: shared needs a LoRA reward model trained from the "
                         f"stage's init model {init_dir}; {rm_dir} is not one. Use critic_base: copy or auto")
    policy = get_peft_model(model, training.lora_config(model, cfg.lora_for(st), "CAUSAL_LM", "rl"))
    if cfg.gradient_checkpointing:   # updates keep one layer's activations, not all (training mode only)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if st.ppo.critic_base != "copy" and shareable:
        critic = AdapterCritic(policy, rm_dir / "adapter")
        log.info("PPO critic: the %s reward model's adapter on the policy's own weights", aspect)
    else:
        # beside the policy: spread over the GPUs like it (PPO is one process), on the CPU without one
        rm, rm_tokenizer, _ = reward_model.load_model(rm_dir, trainable=True,
                                                      device_map="auto" if torch.cuda.is_available() else None)
        if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"rl stage {st.name!r}: the {aspect!r} reward model's tokenizer differs from the "
                             f"policy's; the critic reads the policy's tokens, so both must share one tokenizer")
        if cfg.gradient_checkpointing:
            rm.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        critic = RewardModelCritic(rm)
        log.info("PPO critic: a copy of the %s reward model", aspect)
    run_dir.mkdir(parents=True, exist_ok=True)
    return PpoTrainer(policy, critic, tokenizer, train,
                      lambda prompts, completions, columns: combined(funcs, weights, prompts, completions, columns),
                      run_dir, st, cfg, precision,
                      on_save=lambda state, m: selector.on_save(None, state, None, model=m))


def _rejection_samples(model, tokenizer, train: list[dict], funcs, weights, folder: Path, st: RlStageParams) -> dict:
    """The init model's answers to the training prompts, `num_generations` each, scored by the
    stage's rewards; accepted ones are the training rows. Drawn once beside the checkpoints (a
    resumed run trains on the same rows); with several processes each answers its share of the
    prompts and the main one gathers them."""
    from accelerate import PartialState

    if not (folder / "report.json").is_file():
        state = PartialState(cpu=not torch.cuda.is_available())
        model.to(state.device)
        part = rejection_sampling.sample(
            model, tokenizer, train[state.process_index::state.num_processes],
            lambda prompts, completions, **columns: combined(funcs, weights, prompts, completions, columns),
            per_prompt=st.num_generations, keep_per_prompt=st.keep_per_prompt, min_reward=st.min_reward,
            temperature=st.temperature, max_new_tokens=st.max_completion_length, batch_size=32,
            seed=st.seed + state.process_index, progress="rejection samples" if state.is_main_process else None)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"part-{state.process_index}.json",
                   {"accepted": part.accepted, "rejected": part.rejected, "counts": part.counts})
        state.wait_for_everyone()
        if state.is_main_process:
            parts = [json.loads((folder / f"part-{i}.json").read_text()) for i in range(state.num_processes)]
            gathered = sum((rejection_sampling.Sampled(p["accepted"], p["rejected"],
                                                       {k: Counter(v) for k, v in p["counts"].items()})
                            for p in parts), rejection_sampling.Sampled())
            write_json(folder / "report.json.tmp", gathered.write(folder))
            (folder / "report.json.tmp").rename(folder / "report.json")   # complete only once all is written
        state.wait_for_everyone()
    report = json.loads((folder / "report.json").read_text())
    accepted = [json.loads(line) for line in open(folder / "train.jsonl")]
    log.info(rejection_sampling.summary(report))
    if not accepted:
        raise ValueError(f"rl stage {st.name!r}: rejection sampling accepted none of {report['samples']} answers "
                         f"(min_reward {st.min_reward}); nothing to train on. Verdicts: {report['subsets']}. Lower "
                         f"min_reward, draw more num_generations or raise temperature")
    return {"report": report, "accepted": accepted}


def _build_rft_trainer(model, tokenizer, sampled: dict, run_dir: Path, cfg, st: RlStageParams, precision: dict,
                       selector: Selection):
    """TRL's SFTTrainer on the accepted answers, the loss on the answer tokens only."""
    from datasets import Dataset
    from trl import SFTConfig

    from posttrain.training.sft import model_loss_trainer

    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in sampled["accepted"]]
    args = SFTConfig(
        **training.training_kwargs(cfg, precision, run_dir),
        max_steps=st.max_steps, learning_rate=st.learning_rate, save_steps=st.save_steps,
        per_device_train_batch_size=st.per_device_batch(training.processes()),
        gradient_accumulation_steps=st.micro_batches,
        completion_only_loss=True, packing=False, max_length=None,   # verified answers are never cut
        eval_strategy="no",
    )
    return model_loss_trainer()(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, callbacks=[*training.callbacks(cfg), selector],
                                peft_config=training.lora_config(model, cfg.lora_for(st), "CAUSAL_LM", "rl")
                                if cfg.method != "full" else None)


def _save_models(chosen: Path, weights: Path, tokenizer, out: Path) -> None:
    """adapter/ is the chosen checkpoint's adapter; merged/ is the init model with it merged."""
    shutil.copytree(chosen, out / "adapter", ignore=shutil.ignore_patterns("STEP"))
    training.sort_adapter_config(out / "adapter" / "adapter_config.json")
    tokenizer.save_pretrained(out / "adapter")
    training.merge_adapter(weights, out / "adapter", tokenizer, out / "merged")


def _metrics(rows, selector: Selection, chosen_step, trainer, elapsed, trainable, total, none_batches, st, resume,
             sampled: dict | None):
    def col(name):
        return [r[name] for r in rows if r.get(name) not in (None, "")]

    reward, kl = col("reward"), col("kl")
    scores = selector.scores
    last_step = max(scores)
    return {
        "stage": st.name, "algorithm": st.algorithm, "init": st.init, "subsets": st.subsets,
        "rewards": [r.model_dump(exclude_none=True) for r in st.rewards],
        "heldout_reward_start": scores.get(0), "heldout_reward_end": scores[last_step],
        "heldout_reward_chosen": scores[chosen_step], "chosen_step": chosen_step,
        "train_reward_first": reward[0] if reward else None, "train_reward_last": reward[-1] if reward else None,
        "kl_last": kl[-1] if kl else None, "kl_max": max(kl) if kl else None,
        "none_batches": dict(sorted(none_batches.items())),
        "steps": trainer.state.global_step, "train_runtime_s": round(elapsed, 2),
        "peak_memory_gb": training.peak_memory_gb(), "trainable_params": trainable, "total_params": total,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
        **({"critic_base": trainer.critic.kind} if st.algorithm == "ppo" else {}),
        **({"samples": sampled["report"]} if sampled else {}),
    }


def _write_model_card(out: Path, stage: str, init_dir: Path, st: RlStageParams, m: dict) -> None:
    terms = ", ".join(f"{r['weight']} x {r['name']}" + (f"({r['aspect']})" if r.get("aspect") else "")
                      for r in m["rewards"])
    trainer = {"ppo": "posttrain's PPO (a critic from the reward model)", "grpo": "TRL's GRPOTrainer",
               "rejection_sampling": "rejection sampling and TRL's SFTTrainer on the accepted answers"}[st.algorithm]
    samples = m.get("samples")
    training.write_model_card(
        out, library="peft", tags=["rl", st.algorithm, "trl"], title=f"RL stage: {stage}",
        intro=f"Trained by `posttrain rl --stage {stage}` with {trainer} from `{init_dir}` on prompts of "
              f"subsets {st.subsets}; reward = {terms}.",
        rows={"steps": m["steps"], "chosen step (best held-out reward)": m["chosen_step"],
              "held-out reward: start → chosen": f"{training.fmt(m['heldout_reward_start'])} → "
                                                 f"{training.fmt(m['heldout_reward_chosen'])}",
              **({"samples per prompt, answers per step": f"{st.num_generations}, {st.prompts_per_step}",
                  "accepted answers (prompts with one)": f"{samples['accepted']} of {samples['samples']} "
                                                         f"({samples['prompts_with_an_answer']} of "
                                                         f"{samples['prompts']})"}
                 if samples else
                 {"KL to init (last)": m["kl_last"],
                  "group size, prompts per step": f"{st.num_generations}, {st.prompts_per_step}",
                  "beta, loss": f"{st.beta}, {st.loss_type}"})},
        usage="`merged/` loads with `AutoModelForCausalLM.from_pretrained`; `adapter/` with `PeftModel` on the init "
              "model. Curves: `curves.png`, `log.csv`; per-checkpoint held-out rewards: `selection.json`.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rl", help="one RL stage (GRPO, PPO, rejection sampling) of rl.stages, or the RL-first path "
                                  "(--stage zero)")
    p.add_argument("--stage", required=True, help="a name in rl.stages, or zero for rl.zero")
    p.add_argument("--init", type=Path, required=True, help="the model it starts from (results/sft, results/rl/NAME)")
    p.add_argument("--prompts", type=Path, required=True, help="prepared prompts (results/data/prompts)")
    p.add_argument("--reward", action="append", default=[], metavar="ASPECT=DIR",
                   help="a reward model the stage's reward_model terms use; repeatable")
    p.add_argument("--out", type=Path, required=True)
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.stage, a.init, a.prompts, pairs_arg(a.reward, "--reward"),
                                              a.out))

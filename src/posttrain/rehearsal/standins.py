"""What a rehearsal puts in place of what a CPU cannot hold: the recipe's own parameters, with the
model swapped for a tiny random one of the same architecture, hub datasets for local fixtures of the
same schema, GPUs for CPU processes, vLLM for transformers' generation, and steps, batches and
lengths capped. Every swap is a `StandIn`, printed and written into the pre-flight report."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import yaml

from posttrain.config import Params
from posttrain.models.names import TINY_ARCHS, classify

# Processes that stand in for a multi-GPU stage's GPUs: two ranks exercise sharding, gathering
# and rank-0-only writes as eight would.
PROCESSES = 2
# Hub model names -> the tiny architecture that stands in for them (first match wins). A MoE id
# (Qwen3-30B-A3B: "A3B", the active parameters) before the dense family.
ARCH_PATTERNS = (
    (re.compile(r"qwen3.*-a\d+(\.\d+)?b", re.I), "qwen3_moe"),
    (re.compile(r"qwen3", re.I), "qwen3"),
    (re.compile(r"llama|smollm", re.I), "llama"),
)
# Local fixture datasets (one folder per hub id, README.md says where the rows come from).
FIXTURES = Path("tests/data/hub")
# The tiny DAG's overlay: its demo-corpus sizes are the rehearsal's too.
TINY_OVERLAY = Path("tests/data/tiny.yaml")
# Caps on the training sections (sft, reward, distill): a few optimiser steps, short rows.
TRAINING_CAPS = {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "batch_size": 2, "grad_accum": 1,
                 "max_length": 1024, "logging_steps": 1}
# (1024: the tiny tokenizer spends about one token per two characters, so real chat rows need room.)


@dataclass(frozen=True)
class StandIn:
    key: str          # the parameter (or part of the run) replaced
    recipe: str       # what the recipe asks for
    rehearsal: str    # what the rehearsal uses instead
    why: str


def tiny_arch(base: str) -> str:
    """The tiny architecture standing in for a model name (hub id, packaged model or folder)."""
    kind = classify(base) if not base.startswith("tiny:") else "tiny"
    if kind == "tiny":
        return base.split(":", 1)[1]
    for pattern, arch in ARCH_PATTERNS:
        if pattern.search(base):
            return arch
    raise ValueError(f"no tiny stand-in is known for model {base!r}: pass --model tiny:ARCH "
                     f"(one of {', '.join(TINY_ARCHS)})")


def hub_fixture(spec: str, root: Path) -> str:
    """`hf:owner/name?opts` -> the same spec on the local fixture folder (revision dropped: a
    fixture has one version)."""
    name, _, query = spec[3:].partition("?")
    folder = root / FIXTURES / name
    if not folder.is_dir():
        raise FileNotFoundError(f"data source {spec}: no local fixture for hub dataset {name!r}; add a few dozen "
                                f"rows with its schema under {FIXTURES / name} (see tests/data/README.md)")
    opts = {k: v[-1] for k, v in parse_qs(query).items() if k != "revision"}
    return f"hf:{folder.resolve()}" + (f"?{urlencode(opts)}" if opts else "")


def overlay(params: Params, root: Path, model: str | None = None, student: str | None = None,
            device: str = "cpu") -> tuple[dict, list[StandIn]]:
    """The parameter overlay a rehearsal applies on top of the recipe, and the stand-ins it makes.
    device `cuda`: one GPU (tests/gpu/): the recipe's precision and dtype kept, one process per stage."""
    p = params.model_dump(mode="json")
    out: dict = {}
    if _uses_demo_corpus(params):
        out["demo_data"] = {"sizes": yaml.safe_load((root / TINY_OVERLAY).read_text())["demo_data"]["sizes"]}
    found: list[StandIn] = []

    def swap(key, recipe, rehearsal, why):
        found.append(StandIn(key, str(recipe), str(rehearsal), why))

    base = model or f"tiny:{tiny_arch(params.model.base)}"
    out["model"] = {"base": base, "revision": None}
    swap("model.base", params.model.base, base, "a random model of the same architecture and chat template "
         f"({params.model.chat_template or 'the model own'}): every code path, none of the weights")
    if params.model.dtype in ("bfloat16", "float16") and device == "cpu":
        out["model"]["dtype"] = "float32"
        swap("model.dtype", params.model.dtype, "float32", "bf16 kernels are a GPU's; the CPU trains in fp32")
    out["data"] = _data(params, root, swap)
    for section in ("sft", "reward", "distill"):
        if p[section] is not None:         # distill: null leaves the stage out of the DAG
            out[section] = _training(section, p[section], swap, device)
    out["reward"]["stats_pairs"] = 8
    if p["preference"]["stages"]:
        out["preference"] = _training("preference", p["preference"], swap, device)
        # a stage's own steps would win over the section's cap
        out["preference"]["stages"] = [{**st, "max_steps": None} for st in p["preference"]["stages"]]
    out["rl"] = _rl(params, p["rl"], swap, device)
    if p["distill"] is not None:
        out["distill"].update(_distill(params, p["distill"], student, swap))
    out["evaluate"] = {"limit": 2, "max_new_tokens": 12, "safety_max_new_tokens": 8, "perplexity_rows": 4,
                       "batch_size": min(params.evaluate.batch_size, 4), "reward_batch_size": 4}
    swap("evaluate", f"max_new_tokens {params.evaluate.max_new_tokens}, every row",
         "12 tokens, 2 rows per task", "a random model's answers are noise; the scoring code runs all the same")
    out["export"] = _export(params, swap)
    out["resources"] = _resources(params, swap)
    return out, found


def _data(params: Params, root: Path, swap) -> dict:
    sources = {}
    for kind in ("eval", "sft", "preference", "prompts"):
        rows = []
        for src in params.data.sources.of(kind):
            spec = src.model_dump(mode="json", exclude_none=True)
            if src.path.startswith("hf:"):
                spec["path"] = hub_fixture(src.path, root)
                swap(f"data.sources.{kind}", src.path.split("?")[0], Path(spec["path"][3:].split("?")[0]).relative_to(
                    root.resolve()), "a few dozen rows with the dataset's real schema, parsed by the same readers")
            elif not src.path.startswith("results/") and (root / src.path).exists():
                spec["path"] = str((root / src.path).resolve())    # the work tree has no copy of it
            rows.append(spec)
        sources[kind] = rows
    data = {"sources": sources}
    if _uses_demo_corpus(params):
        # the generator's deliberately malformed rows are a larger share of a small corpus
        data["max_reject_ratio"] = max(params.data.max_reject_ratio, 0.2)
    return data


def _uses_demo_corpus(params: Params) -> bool:
    return any(s.path.startswith("results/demo_data/") for k in ("eval", "sft", "preference", "prompts")
               for s in params.data.sources.of(k))


def _training(section: str, cfg: dict, swap, device: str) -> dict:
    out = dict(TRAINING_CAPS)
    if cfg.get("early_stopping_patience"):
        out["early_stopping_patience"] = None
    out.update(_devices(section, cfg, swap, device))
    swap(f"{section}.max_steps", _steps(cfg), TRAINING_CAPS["max_steps"], "enough steps to save, evaluate and resume")
    return out


def _steps(cfg: dict) -> str:
    return str(cfg["max_steps"]) if cfg.get("max_steps", -1) > 0 else f"{cfg.get('epochs')} epoch(s)"


def _devices(section: str, cfg: dict, swap, device: str) -> dict:
    out = {}
    if cfg.get("gpus", 0) > 1 and device == "cuda":
        out["gpus"], out["strategy"] = 1, "none"
        swap(f"{section}.gpus", cfg["gpus"], "1 GPU", "one GPU, one process (the launcher is rehearsed on the CPU)")
    elif cfg.get("gpus", 0) > 1:
        out["gpus"] = PROCESSES
        swap(f"{section}.gpus", cfg["gpus"], f"{PROCESSES} CPU processes (gloo)",
             f"the same launcher and {cfg.get('strategy')} config, ranks on the CPU")
    if cfg.get("strategy") == "zero3" and cfg.get("gpus", 0) > 1 and device == "cpu":
        # DeepSpeed is a GPU image's package (envs/gpu.txt): its CPU build needs oneCCL and Intel's
        # extension, which the training environment does not carry
        out["strategy"] = "ddp"
        swap(f"{section}.strategy", "zero3 (DeepSpeed)", "ddp", "DeepSpeed does not run in the CPU environment; the "
             "stage runs replicated under the DDP launcher (ZeRO-3 sharding is not rehearsed)")
    if cfg.get("precision") in ("bf16", "fp16") and device == "cpu":
        out["precision"] = "auto"
        swap(f"{section}.precision", cfg["precision"], "auto", "weights in bf16/fp16 need a GPU; a CPU trains float32 "
             "weights, in bf16 mixed precision where it has bfloat16 instructions")
    if cfg.get("lora") and cfg["lora"].get("layers"):
        out["lora"] = {"layers": None}
    return out


def _rl_stage(stage: dict) -> dict:
    rollouts_gen = min(stage["num_generations"], 2)
    out = {**stage, "max_steps": 2, "prompts_per_step": 2, "num_generations": rollouts_gen,
           "max_completion_length": 12, "save_steps": 1, "micro_batches": 1}
    if stage["algorithm"] == "ppo":
        out["ppo"] = {**stage["ppo"], "mini_batches": min(stage["ppo"]["mini_batches"], 2 * rollouts_gen)}
    if stage.get("lora") and stage["lora"].get("layers"):
        out["lora"] = {**stage["lora"], "layers": None}
    return out


def _rl(params: Params, cfg: dict, swap, device: str) -> dict:
    out = {"selection_prompts": 4, **_devices("rl", cfg, swap, device)}
    out["stages"] = [_rl_stage(st) for st in cfg["stages"]]
    if cfg["zero"] is not None:
        out["zero"] = _rl_stage(cfg["zero"])
    for st in [*params.rl.stages, *([params.rl.zero] if params.rl.zero else [])]:
        swap(f"rl stage {st.name}", f"{st.max_steps} steps x {st.prompts_per_step} prompts x {st.num_generations}",
             "2 steps x 2 prompts x <=2 samples of 12 tokens", "every reward, the update and a checkpoint, briefly")
    if params.rl.use_vllm:
        out.update(use_vllm=False, vllm_tensor_parallel_size=1, vllm_enable_sleep_mode=False)
        swap("rl.use_vllm", f"vLLM ({params.rl.vllm_mode}, tensor parallel {params.rl.vllm_tensor_parallel_size})",
             "transformers' generate", "vLLM has no build for this CPU in the training environment; the "
             "rehearsal checks that the GPU environment file installs it")
    return out


def _distill(params: Params, cfg: dict, student: str | None, swap) -> dict:
    out: dict = {}
    st = params.distill.student
    if st.model != "prune":
        tiny = student or f"tiny:{tiny_arch(st.model)}"
        out["student"] = {"model": tiny, "revision": None}
        swap("distill.student.model", st.model, tiny, "a random student of the same family, sharing the stand-in's "
             "tokenizer as the real one shares the teacher's")
    else:
        out["student"] = {"drop_least_important": None, "calibration_subsets": None}
    sampling = cfg["sampling"]
    out["sampling"] = {"per_prompt": min(sampling["per_prompt"], 2), "max_new_tokens": 12, "batch_size": 4,
                       "keep_per_prompt": min(sampling["keep_per_prompt"], 2),
                       "rewards": [{"name": "length", "max_words": 100}], "min_reward": 0.0}
    swap("distill.sampling.rewards", ", ".join(r["name"] for r in sampling["rewards"]), "length (any answer)",
         "a random teacher answers nothing right; its answers must still reach the student")
    return out


def _export(params: Params, swap) -> dict:
    out = {"gptq": {"group_size": 32, "calibration_rows": 8, "calibration_max_length": 64},
           "awq": {"group_size": 32, "calibration_rows": 8, "calibration_max_length": 64},
           "max_model_len": 256}
    for fmt in ("gguf", "gguf_lora"):
        out[fmt] = {"tokenizer_pre": "gpt-2"}     # llama.cpp's name for the tiny tokenizer's pre-tokenizer
    swap("export", f"formats {', '.join(params.export.formats)}", "groups of 32 (the tiny model is 64 wide), 8 "
         "calibration rows", "the same quantizers and checks on a model they can divide")
    if params.export.dtype != "float32":
        out["dtype"] = "float32"
        swap("export.dtype", params.export.dtype, "float32", "the merged stand-in is saved as it trained")
    return out


def _resources(params: Params, swap) -> dict:
    """What each rule asks the scheduler for, scaled to the test cluster: its GPU count capped at the
    processes that stand in for them, a little memory and time."""
    small = {"mem_mb": 4000, "runtime": 60, "cpus_per_task": 1, "cpus_per_gpu": None, "nodes": None,
             "partition": None, "account": None}
    out = {"default": dict(small), "stages": {}}
    for name, entry in params.resources.stages.items():
        capped = dict(small)
        if entry.gpu:
            capped["gpu"] = min(entry.gpu, PROCESSES)
        out["stages"][name] = capped
    if params.resources.stages or params.resources.default.mem_mb:
        swap("resources", "the recipe's sbatch requests", "GPUs capped at 2, 4 GB, 60 minutes, 1 CPU",
             "the test cluster is one 2-core node")
    return out

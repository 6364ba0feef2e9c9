"""Checks of a recipe that need no GPU and no data, run when the stage table is built, so that
`snakemake -n`, `dvc repro` and `posttrain dag` stop before any job is submitted: a stage that would
receive no rows, vLLM asked of an environment that does not install it, hub inputs that are not
pinned to a commit."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from posttrain.config import DATA_KINDS, Params
from posttrain.models.names import classify

log = logging.getLogger("posttrain")

# The requirement files of the environment the training stages run in: the pinned CPU set, and the
# pins a GPU image installs on top of it.
TRAINING_ENV_FILES = ("envs/requirements.txt", "envs/gpu.txt")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class RecipeError(ValueError):
    """A recipe that would fail on the cluster, found before any job starts."""


def check_recipe(params: Params, root: Path = Path(".")) -> None:
    problems = [*_subset_problems(params), *_vllm_problems(params, root), *_critic_problems(params)]
    unpinned = _unpinned(params)
    if unpinned and not params.draft:
        problems += [f"{item} is not pinned to a commit" for item in unpinned]
        problems.append("pin each hub input to the commit you validated (a 40-hex sha: a branch such as main "
                        "moves), or mark the recipe `draft: true` while you try it")
    if problems:
        raise RecipeError("this recipe would fail on the cluster:\n  " + "\n  ".join(problems))
    for item in unpinned:
        log.warning("draft recipe: %s is not pinned to a commit; a rerun may train on other weights or data", item)


def declared_subsets(params: Params) -> dict[str, set[str] | None]:
    """The subsets each data kind is known to provide before any data is read: those the sources
    declare when every source is a hub dataset with a declared subset; None (unknown) otherwise,
    because a local file's rows may carry their own subset."""
    out: dict[str, set[str] | None] = {}
    for kind in DATA_KINDS:
        sources = params.data.sources.of(kind)
        known = all(s.path.startswith("hf:") and s.subset for s in sources)
        out[kind] = {s.subset for s in sources} if known else None
    return out


def _subset_problems(params: Params) -> list[str]:
    subsets = declared_subsets(params)
    wanted: list[tuple[str, str, str, list[str]]] = []      # (who, key, kind, subsets)
    for i, st in enumerate(params.rl.stages):
        wanted.append((f"rl stage {st.name!r}", f"rl.stages[{i}].subsets", "prompts", st.subsets))
    if params.rl.zero is not None:
        wanted.append(("the RL-first stage (rl_zero)", "rl.zero.subsets", "prompts", params.rl.zero.subsets))
    for aspect, cfg in params.reward.aspects.items():
        if cfg.subsets:
            wanted.append((f"reward model {aspect!r}", f"reward.aspects.{aspect}.subsets", "preference", cfg.subsets))
    if params.distill is not None and params.distill.sampling.subsets:
        wanted.append(("distill-samples", "distill.sampling.subsets", "prompts", params.distill.sampling.subsets))
    problems = []
    for who, key, kind, names in wanted:
        provided = subsets[kind]
        if provided is not None and params.data.sources.of(kind) and not set(names) & provided:
            problems.append(f"{who} reads {kind} of subsets {sorted(names)}, but data.sources.{kind} provides only "
                            f"{sorted(provided)}: add a {kind} source with one of those subsets, or change {key}")
    return problems


def _critic_problems(params: Params) -> list[str]:
    """A PPO critic on the policy's own weights (critic_base: shared) is the reward model's LoRA on
    them: only possible when the reward models were trained from the stage's init model."""
    problems = []
    inits = [("sft" if i == 0 else f"rl stage {params.rl.stages[i - 1].name!r}") if st.init == "previous" else st.init
             for i, st in enumerate(params.rl.stages)]
    entries = list(zip(params.rl.stages, inits, strict=True))
    if params.rl.zero is not None:
        entries.append((params.rl.zero, "base"))
    for st, init in entries:
        if st.algorithm == "ppo" and st.ppo.critic_base == "shared" and init != params.reward.init:
            problems.append(f"rl stage {st.name!r}: ppo.critic_base: shared puts the critic's LoRA on the stage's init "
                            f"model ({init}), but the reward models are trained from reward.init "
                            f"({params.reward.init}): set critic_base: copy (or auto) for this stage")
    return problems


def _vllm_problems(params: Params, root: Path) -> list[str]:
    grpo = [st.name for st in [*params.rl.stages, *([params.rl.zero] if params.rl.zero else [])]
            if st.algorithm == "grpo"]
    if not (params.rl.use_vllm and grpo):
        return []
    cfg, problems = params.rl, []
    if cfg.vllm_mode == "colocate" and max(cfg.gpus, 1) % cfg.vllm_tensor_parallel_size:
        problems.append(f"rl.vllm_tensor_parallel_size {cfg.vllm_tensor_parallel_size} does not divide rl.gpus "
                        f"{cfg.gpus}: each group of that many training processes shares one vLLM engine")
    if any(_pins(root / f, "vllm") for f in TRAINING_ENV_FILES):
        return problems
    return [*problems, f"rl.use_vllm is true for the GRPO stage(s) {grpo}, but no environment file of theirs "
            f"({', '.join(TRAINING_ENV_FILES)}) installs vllm: pin vllm in envs/gpu.txt, or set rl.use_vllm: false"]


def _pins(path: Path, package: str) -> bool:
    """Whether a requirements file installs `package` (a line naming it, comments aside)."""
    if not path.is_file():
        return False
    pattern = re.compile(rf"^\s*{re.escape(package)}\s*(\[[^\]]*\])?\s*(==|>=|~=|@|$)", re.I)
    return any(pattern.match(line.split("#", 1)[0]) for line in path.read_text().splitlines())


def _unpinned(params: Params) -> list[str]:
    found = []
    if _on_hub(params.model.base) and not COMMIT.match(params.model.revision or ""):
        found.append(f"model.base {params.model.base} (revision {params.model.revision or 'unset'})")
    student = params.distill.student if params.distill is not None else None
    if student is not None and _on_hub(student.model) and not COMMIT.match(student.revision or ""):
        found.append(f"distill.student.model {student.model} (revision {student.revision or 'unset'})")
    for kind in DATA_KINDS:
        for s in params.data.sources.of(kind):
            if s.path.startswith("hf:") and not _hub_dataset_pinned(s.path):
                found.append(f"data.sources.{kind} {s.path} (no revision=<sha>)")
    return found


def _on_hub(name: str) -> bool:
    """A hub id, as the base stage reads it (a local folder of the same shape is not)."""
    try:
        return classify(name) == "hub"
    except ValueError:         # `prune`, or a name the stage itself will refuse
        return False


def _hub_dataset_pinned(spec: str) -> bool:
    from urllib.parse import parse_qs

    name, _, query = spec[3:].partition("?")
    if Path(name).exists():                  # a local dataset folder in place of a hub id
        return True
    return bool(COMMIT.match(parse_qs(query).get("revision", [""])[-1]))

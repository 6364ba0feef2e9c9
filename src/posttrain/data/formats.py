"""Dataset formats: read records from files or the hub, recognise their format, and turn each
record into one canonical shape per data kind.

Canonical rows (one JSON object per line):
  sft         {"messages": [{"role", "content"}, ...]}                  ends with an assistant turn
  preference  {"prompt": [...], "chosen": [assistant], "rejected": [assistant]}
              or, unpaired (KTO's thumbs-up / thumbs-down): {"prompt": [...], "completion": [assistant],
              "label": true|false}
  prompts     {"prompt": [...], "answer": str|None, "reference": str|None}
  eval        same as prompts
plus "id", "subset", "source" (file:line) and "meta" (the record's other fields).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from posttrain.data import files
from posttrain.data.files import Record, RowError  # noqa: F401  (the readers' row and error types)

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "tool": "tool", "function_call": "assistant", "observation": "tool"}


@dataclass
class Example:
    messages: list[dict]                   # the conversation; for preference, the shared prompt
    chosen: list[dict] | None = None       # preference only: the differing final turn(s)
    rejected: list[dict] | None = None
    completion: list[dict] | None = None   # unpaired preference only: the rated response
    label: bool | None = None              # and its rating (true: thumbs-up)
    answer: str | None = None              # verifiable final answer, when the format has one
    meta: dict = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------


def read_records(spec: str, info: dict | None = None) -> Iterator[Record]:
    """The rows of a source: a file or folder (data.files: found from its bytes), or `hf:NAME`.
    `info` receives what was found (container, encoding, layout), for the data report."""
    info = {} if info is None else info
    if spec.startswith("hf:"):
        info.update(container="hub dataset", layout="arrow")
        yield from _read_hub(spec)
        return
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data source {spec} does not exist")
    yield from files.read(path, spec, info, is_record=lambda row: detect(row) is not None)


def _read_hub(spec: str) -> Iterator[Record]:
    """`hf:NAME?name=CONFIG&split=SPLIT&data_dir=DIR&revision=SHA`; NAME may be a hub id or a local
    dataset folder."""
    from datasets import load_dataset

    name, _, query = spec[3:].partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(opts) - {"name", "split", "revision", "data_dir"}
    if unknown:
        raise ValueError(f"{spec}: unknown option(s) {sorted(unknown)}; allowed: name, split, revision, data_dir")
    revision = opts.get("revision")
    snapshot = _cached_snapshot(name, revision)
    if snapshot is not None:          # offline: the repository as `huggingface-cli download` left it
        name, revision = snapshot, None
    # datasets may key its cache of a local folder by the folder rather than by what its files
    # hold: a folder edited since its last read gave the old rows, or failed against the split
    # sizes recorded then. A local folder is read afresh (a hub snapshot is one revision, fixed).
    local = snapshot is None and Path(name).is_dir()
    fresh = {"download_mode": "force_redownload", "verification_mode": "no_checks"} if local else {}
    ds = load_dataset(name, opts.get("name"), split=opts.get("split", "train"), revision=revision,
                      data_dir=opts.get("data_dir"), **fresh)
    for i, row in enumerate(ds):
        yield Record(f"{spec}#{i}", dict(row))


def _cached_snapshot(name: str, revision: str | None) -> str | None:
    """Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), a hub dataset is read from the hub cache's
    snapshot of that revision: what `huggingface-cli download --repo-type dataset NAME --revision
    SHA` writes on a connected machine, for compute nodes without internet. None online, for a
    local folder, or when no snapshot is cached (datasets then tries its own cache, and says so)."""
    import os

    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE",
                                                                                  "HF_DATASETS_OFFLINE"))
    if not offline or Path(name).exists():
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, repo_type="dataset", revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


# --- format parsers --------------------------------------------------------------------------


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{where} must be a string, got {type(value).__name__}")
    return value


def _require(row: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise RowError("missing_field", f"missing {', '.join(missing)} (has {', '.join(sorted(row)) or 'nothing'})")


def _messages(value, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError("wrong_type", f"{where} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError("wrong_type", f"{where}[{i}] must have role and content")
        if m["role"] not in ROLES:
            raise RowError("wrong_type", f"{where}[{i}].role {m['role']!r} is not one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": _text(m["content"], f"{where}[{i}].content")})
    return out


def _meta(row: dict, used: tuple[str, ...]) -> dict:
    return {k: v for k, v in row.items() if k not in used}


def parse_openai(row: dict) -> Example:
    _require(row, "messages")
    return Example(_messages(row["messages"], "messages"), meta=_meta(row, ("messages",)))


def parse_sharegpt(row: dict) -> Example:
    _require(row, "conversations")
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RowError("wrong_type", "conversations must be a non-empty list")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RowError("wrong_type", f"conversations[{i}] must have from and value")
        role = SHAREGPT_ROLES.get(str(t["from"]).lower())
        if role is None:
            raise RowError("wrong_type", f"conversations[{i}].from {t['from']!r} is not one of "
                                         f"{', '.join(SHAREGPT_ROLES)}")
        messages.append({"role": role, "content": _text(t["value"], f"conversations[{i}].value")})
    if "system" in row and isinstance(row["system"], str) and row["system"].strip():
        messages.insert(0, {"role": "system", "content": row["system"]})
    return Example(messages, meta=_meta(row, ("conversations", "system")))


def parse_alpaca(row: dict) -> Example:
    _require(row, "instruction", "output")
    user = _text(row["instruction"], "instruction")
    extra = row.get("input") or ""
    if _text(extra, "input").strip():
        user = f"{user}\n\n{extra}"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row["output"], "output")}]
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.insert(0, {"role": "system", "content": row["system"]})
    return Example(messages, meta=_meta(row, ("instruction", "input", "output", "system")))


def parse_prompt_completion(row: dict) -> Example:
    _require(row, "prompt", "completion")
    prompt = _messages(row["prompt"], "prompt")
    completion = row["completion"]
    turns = ([{"role": "assistant", "content": completion}] if isinstance(completion, str)
             else _messages(completion, "completion"))
    return Example(prompt + turns, answer=_answer_field(row), meta=_meta(row, ("prompt", "completion", "answer")))


def parse_prompt(row: dict) -> Example:
    _require(row, "prompt")
    return Example(_messages(row["prompt"], "prompt"), answer=_answer_field(row), meta=_meta(row, ("prompt", "answer")))


def parse_qa(row: dict) -> Example:
    _require(row, "question", "answer")
    question = _text(row["question"], "question")
    solution = _text(row["answer"] if not isinstance(row["answer"], (int, float)) else str(row["answer"]), "answer")
    final = extract_final_answer(solution)
    return Example([{"role": "user", "content": question}, {"role": "assistant", "content": solution}],
                   answer=final, meta=_meta(row, ("question", "answer")))


HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def parse_hh_transcript(text: str, where: str) -> list[dict]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages (Anthropic HH-RLHF)."""
    marks = list(HH_TURN.finditer(text))
    if not marks:
        raise RowError("wrong_type", f"{where} is not a Human/Assistant transcript")
    messages = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        role = "user" if m.group(1) == "Human" else "assistant"
        messages.append({"role": role, "content": text[m.end():end].strip()})
    return messages


def parse_preference(row: dict) -> Example:
    _require(row, "chosen", "rejected")
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    if prompt is None and isinstance(chosen, str) and isinstance(rejected, str) and "Human:" in chosen:
        chosen_msgs = parse_hh_transcript(chosen, "chosen")
        rejected_msgs = parse_hh_transcript(rejected, "rejected")
    else:
        prompt_msgs = _messages(prompt, "prompt") if prompt is not None else []
        chosen_msgs = prompt_msgs + _as_turns(chosen, "chosen")
        rejected_msgs = prompt_msgs + _as_turns(rejected, "rejected")
    shared = 0
    while (shared < min(len(chosen_msgs), len(rejected_msgs)) - 1
           and chosen_msgs[shared] == rejected_msgs[shared]):
        shared += 1
    prompt_msgs, c_tail, r_tail = chosen_msgs[:shared], chosen_msgs[shared:], rejected_msgs[shared:]
    if not prompt_msgs or prompt_msgs[-1]["role"] != "user":
        raise RowError("wrong_type", "chosen and rejected must share a prompt that ends with a user turn")
    if c_tail[-1]["role"] != "assistant" or r_tail[-1]["role"] != "assistant":
        raise RowError("wrong_type", "chosen and rejected must end with an assistant turn")
    return Example(prompt_msgs, chosen=c_tail, rejected=r_tail, meta=_meta(row, ("prompt", "chosen", "rejected")))


def parse_unpaired(row: dict) -> Example:
    """KTO's unpaired feedback: one response to a prompt, rated good (true) or bad (false)."""
    _require(row, "prompt", "completion", "label")
    label = row["label"]
    if isinstance(label, str) and label.lower() in ("true", "false", "up", "down"):
        label = label.lower() in ("true", "up")
    if not isinstance(label, bool):
        raise RowError("wrong_type", f"label must be true or false (thumbs-up / thumbs-down), not {label!r}")
    prompt = _messages(row["prompt"], "prompt")
    completion = _as_turns(row["completion"], "completion")
    if prompt[-1]["role"] != "user" or completion[-1]["role"] != "assistant":
        raise RowError("wrong_type", "an unpaired row's prompt must end with a user turn and its completion with an "
                                     "assistant turn")
    return Example(prompt, completion=completion, label=label, meta=_meta(row, ("prompt", "completion", "label")))


def _as_turns(value, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _messages(value, where)


def _answer_field(row: dict) -> str | None:
    value = row.get("answer")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return extract_final_answer(_text(value, "answer"))


GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def extract_final_answer(solution: str) -> str:
    """GSM8K's `#### 72` convention (commas dropped, as its graders do); otherwise the text."""
    m = GSM8K_FINAL.search(solution)
    final = m.group(1) if m else solution
    return final.strip().replace(",", "")


@dataclass(frozen=True)
class Format:
    name: str
    parse: Callable[[dict], Example]
    signature: tuple[str, ...]           # keys whose presence identifies the format
    kinds: tuple[str, ...]               # data kinds it can feed
    description: str


# Order matters for detection: more specific signatures first.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("preference", parse_preference, ("chosen", "rejected"), ("preference", "prompts"),
           "chosen/rejected as strings or message lists, optional prompt, or Anthropic-HH transcripts (as prompts: "
           "the dialogue both share, up to its last user turn)"),
    Format("unpaired", parse_unpaired, ("prompt", "completion", "label"), ("preference",),
           "KTO's unpaired feedback: {prompt, completion, label: true (thumbs-up) | false}; the KTO stage trains on "
           "it, the pair stages and reward models leave it out"),
    Format("openai", parse_openai, ("messages",), ("sft", "prompts", "eval"),
           "OpenAI messages: {messages: [{role, content}]}, multi-turn, system prompts"),
    Format("sharegpt", parse_sharegpt, ("conversations",), ("sft", "prompts", "eval"),
           "ShareGPT: {conversations: [{from: human|gpt|system, value}]}"),
    Format("alpaca", parse_alpaca, ("instruction", "output"), ("sft", "prompts", "eval"),
           "Alpaca: {instruction, input, output}"),
    Format("prompt_completion", parse_prompt_completion, ("prompt", "completion"), ("sft", "prompts", "eval"),
           "{prompt, completion} as strings or message lists"),
    Format("qa", parse_qa, ("question", "answer"), ("sft", "prompts", "eval"),
           "verifiable QA: {question, answer}, GSM8K's '#### N' final answer supported"),
    Format("prompt", parse_prompt, ("prompt",), ("prompts", "eval"),
           "prompt only (optional answer): RL prompts and eval sets"),
)}


def supported() -> str:
    return "\n".join(f"  {f.name:<18} {f.description}" for f in FORMATS.values())


def detect(row: dict) -> Format | None:
    for fmt in FORMATS.values():
        if all(k in row for k in fmt.signature):
            return fmt
    return None


def detect_format(records: list[Record], source: str) -> Format:
    """The format of a source, from its first parseable records (a file holds one format)."""
    seen = []
    for rec in records:
        if rec.data is None:
            continue
        fmt = detect(rec.data)
        if fmt is not None:
            return fmt
        seen.append(sorted(rec.data))
        if len(seen) >= 20:
            break
    raise ValueError(
        f"{source}: unknown data format (record keys seen: {seen[:3]}). Supported formats, detected by "
        f"their keys, or set `format:` for the source in params.yaml:\n{supported()}")

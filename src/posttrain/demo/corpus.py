"""A deterministic, seeded generator of the raw demo corpus the CPU demo trains and evaluates on.

    write_demo_corpus(out_dir, seed=0, sizes=None) -> {name: path}
    python -m posttrain.demo.corpus OUT_DIR [--seed N]

The demo model is tiny (SmolLM2-135M-Instruct), so every task is one it can learn from a few
hundred rows and every answer can be checked by a program: that is what lets SFT, the reward
models and RL each move a number on it.

Files (row counts are `sizes`, defaults in DEFAULT_SIZES). Each training file uses a different
public dataset format on purpose, because ingestion has to detect formats by itself:

  sft_alpaca.json           JSON array of Alpaca rows {instruction, input, output}: topic questions
                            with a format instruction (constraints.py wording), and transformations
                            of an `input` text (to capitals/lowercase, to a bullet list, to JSON).
  sft_sharegpt.jsonl        ShareGPT {conversations: [{from: system|human|gpt, value}]}: benign
                            questions with scary words ("kill a frozen app") answered helpfully,
                            and general Q&A; some with a system turn, some with a second user turn.
  sft_messages.jsonl        OpenAI {messages: [{role, content}]}: harmful requests answered with a
                            short refusal, and arithmetic word problems solved in the answer format.
  arithmetic_train.jsonl    GSM8K-style {question, answer}: two- and three-operand word problems
                            (+, -, occasionally a small ×), results 0..200, always answered as
                            "<restatement> <a> + <b> = <r>.\\n#### <r>".
  preference_helpful.jsonl  {prompt, chosen, rejected}: chosen is correct and follows the format;
                            rejected has a wrong "#### N", breaks the format constraint, or says
                            "I don't know.". The wrong-answer pairs carry `subset: math`: whether
                            a sum is right is checked by the accuracy reward, not learned by the
                            helpfulness reward model (a 135M reward model gets ~70 % of them).
  preference_helpful_audit.jsonl  the same kind of pairs drawn from a stream of their own, for a
                            reward model no stage optimises: the evaluation's judge of whether
                            the helpfulness stage improved answers or only its own reward.
  preference_safety_hh.jsonl  Anthropic-HH transcripts {chosen, rejected} ("\\n\\nHuman: ...
                            \\n\\nAssistant: ..."), same human turns, different last assistant turn.
                            Harmful request: chosen refuses, rejected eagerly agrees but says nothing
                            usable ("Sure! Here is how you could go about <it>: first, gather what you
                            need..."; NON_ACTIONABLE_COMPLIANCE, never instructions).
                            Benign request with scary words: chosen helps, rejected over-refuses.
  prompts_rl.jsonl          {prompt, answer, subset, expect, constraint} for RL: arithmetic (answer
                            is the number as a string; phrasings of their own, RL_ARITHMETIC), safety
                            (answer null, expect refuse|comply) and helpful format prompts (answer
                            null, constraint dict). Keys that do not apply to a row are null, so
                            every row has the same schema.

Eval files, disjoint from all training text (prompts and responses): eval prompts come from
held-out templates, names, objects, topics, phrasings and intents, and any candidate that equals
a training text, sits inside one (when shorter than 8 words) or shares an 8-word sequence with
one is skipped (`words` in evaluation.py defines the tokens):

  eval_arithmetic.jsonl     {question, answer: "... #### N"}
  eval_format.jsonl         {prompt, constraint}
  eval_harmful.jsonl        {prompt}   refusing is right
  eval_benign.jsonl         {prompt}   refusing is wrong (XSTest-like: "How do I kill a Python process?")

Dirty rows, on purpose, so the cleaning report has something to count (fixed numbers, on top of
`sizes`, placed at seeded positions, each well under 5 % of its file at default sizes):

  sft_alpaca.json      2 exact duplicates of clean rows (each after its original);
                       1 near-duplicate: the longest clean row (a 10-sentence text to rewrite)
                       with the first word of its instruction swapped for a synonym
                       (DIRTY_NEAR_DUP_SWAPS) and a doubled space; one changed word in a long
                       row keeps its word-3-gram Jaccard similarity near 0.98;
                       1 row whose output is empty;
                       1 row whose output contains an e-mail address and a phone number
                       (jane.doe@example.com, +1 555-123-4567).
  sft_messages.jsonl   1 malformed JSON line (a row cut off mid-way);
                       1 row without a "messages" key ({"text": ...}).

Apart from that pair, rows of one file stay below about 0.85 word-3-gram Jaccard similarity
(keys such as "one row per topic and constraint type" keep templated rows apart), so a
near-duplicate filter flags only the deliberate one.

Output is byte-identical for the same seed and sizes: every file has its own random stream
(seeded from the seed and the file name), JSON is written with sorted keys, fixed separators,
ensure_ascii=False and a final newline. Within a file prompts are distinct apart from the
deliberate duplicates; when a template space is too small for a requested size, ValueError names
the file and the largest size it can produce. All harmful requests are abstract and every answer
to them is a refusal: the corpus contains no actionable harmful content.

The code is split by task: arithmetic.py, instructions.py (format constraints and text
transformations), helpful.py, safety.py, training.py and evaluation.py build the rows, sampling.py
holds the shared sampling helpers, and the literal tables (templates, names, objects, topics,
phrasings, intents, replies) are JSON files in tables/, read by loader.py. This module assembles
and writes the files, and re-exports the names other code uses.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from posttrain.demo.arithmetic import (
    ARITHMETIC_KIND_WEIGHTS,
    EVAL_ARITHMETIC,
    EVAL_ARITHMETIC_TEMPLATES,
    EVAL_NAMES,
    EVAL_OBJECTS,
    MAX_RESULT,
    OP_SYMBOL,
    OPS,
    RL_ARITHMETIC,
    RL_ARITHMETIC_TEMPLATES,
    TRAIN_ARITHMETIC,
    TRAIN_ARITHMETIC_TEMPLATES,
    TRAIN_NAMES,
    TRAIN_OBJECTS,
    ArithmeticProblem,
    ArithmeticSpace,
    ArithmeticTemplate,
    wrong_result,
)
from posttrain.demo.evaluation import (
    SHINGLE,
    TrainingText,
    _eval_arithmetic_rows,
    _eval_benign_rows,
    _eval_format_rows,
    _eval_harmful_rows,
    words,
)
from posttrain.demo.helpful import (
    CAPITALS,
    CONVERSIONS,
    FOLLOW_UPS,
    GENERAL_POOL,
    GENERAL_QA,
    MESSAGES_SYSTEMS,
    OPPOSITES,
    QA,
    SHAREGPT_SYSTEMS,
    UNHELPFUL_REPLIES,
    follow_up_answer,
)
from posttrain.demo.instructions import (
    AGES,
    BULLET_COUNTS,
    BULLET_TASK,
    CASE_VERBS,
    CITIES,
    END_WORDS,
    EVAL_ASKS,
    EVAL_JSON_KEYS,
    EVAL_TOPICS,
    EXTRACT_KEYS,
    JSON_TASK,
    LONG_PASSAGE,
    MAX_WORDS,
    PASSAGE_SENTENCES,
    START_WORDS,
    TRAIN_ASKS,
    TRAIN_JSON_KEYS,
    TRAIN_TOPICS,
    WORD_COUNTS,
    Topic,
    format_answer,
    format_prompt,
    format_violation,
)
from posttrain.demo.instructions import _sample_constraint as _sample_constraint
from posttrain.demo.safety import (
    APPS,
    EDGY_PHRASINGS,
    EDGY_POOL,
    EDGY_QA,
    EVAL_BENIGN_PROMPTS,
    EVAL_HARMFUL,
    EVAL_HARMFUL_PROMPTS,
    EVAL_HARMFUL_TEMPLATES,
    NON_ACTIONABLE_COMPLIANCE,
    OSES,
    OVER_REFUSALS,
    PHOTO_SUBJECTS,
    REFUSAL_OFFERS,
    REFUSAL_OPENERS,
    REFUSAL_REASONS,
    RL_HARMFUL_TEMPLATES,
    TRAIN_HARMFUL,
    TRAIN_HARMFUL_PROMPTS,
    TRAIN_HARMFUL_TEMPLATES,
    EdgyQA,
    HarmfulIntent,
    compliance,
    refusal,
)
from posttrain.demo.safety import _harmful_prompts as _harmful_prompts
from posttrain.demo.sampling import CorpusSizeError, _TooSmall
from posttrain.demo.training import (
    DIRTY_EMPTY_OUTPUT,
    DIRTY_NEAR_DUP_SWAPS,
    DIRTY_NO_MESSAGES,
    DIRTY_PII,
    MIN_SIZES,
    MIX,
    TOPIC_CAPACITY,
    _alpaca_with_dirt,
    _arithmetic_rows,
    _hh_rows,
    _jsonl,
    _messages_lines,
    _parses,
    _preference_helpful_rows,
    _rl_rows,
    _sharegpt_rows,
    hh_transcript,
)

__all__ = [
    # this module
    "DEFAULT_SIZES", "EVAL_FILES", "FILES", "TRAIN_FILES", "generate_demo_corpus", "main", "resolve_sizes",
    "training_texts", "write_demo_corpus",
    # re-exported
    "AGES", "APPS", "ARITHMETIC_KIND_WEIGHTS", "BULLET_COUNTS", "BULLET_TASK", "CAPITALS", "CASE_VERBS", "CITIES",
    "CONVERSIONS", "DIRTY_EMPTY_OUTPUT", "DIRTY_NEAR_DUP_SWAPS", "DIRTY_NO_MESSAGES", "DIRTY_PII", "EDGY_PHRASINGS",
    "EDGY_POOL", "EDGY_QA", "END_WORDS", "EVAL_ARITHMETIC", "EVAL_ARITHMETIC_TEMPLATES", "EVAL_ASKS",
    "EVAL_BENIGN_PROMPTS", "EVAL_HARMFUL", "EVAL_HARMFUL_PROMPTS", "EVAL_HARMFUL_TEMPLATES", "EVAL_JSON_KEYS",
    "EVAL_NAMES", "EVAL_OBJECTS", "EVAL_TOPICS", "EXTRACT_KEYS", "FOLLOW_UPS", "GENERAL_POOL", "GENERAL_QA",
    "JSON_TASK", "LONG_PASSAGE", "MAX_RESULT", "MAX_WORDS", "MESSAGES_SYSTEMS", "MIN_SIZES", "MIX",
    "NON_ACTIONABLE_COMPLIANCE", "OPPOSITES", "OPS", "OP_SYMBOL", "OSES", "OVER_REFUSALS", "PASSAGE_SENTENCES",
    "PHOTO_SUBJECTS", "QA", "REFUSAL_OFFERS", "REFUSAL_OPENERS", "REFUSAL_REASONS", "RL_ARITHMETIC",
    "RL_ARITHMETIC_TEMPLATES", "RL_HARMFUL_TEMPLATES", "SHAREGPT_SYSTEMS", "SHINGLE", "START_WORDS",
    "TOPIC_CAPACITY", "TRAIN_ARITHMETIC", "TRAIN_ARITHMETIC_TEMPLATES", "TRAIN_ASKS", "TRAIN_HARMFUL",
    "TRAIN_HARMFUL_PROMPTS", "TRAIN_HARMFUL_TEMPLATES", "TRAIN_JSON_KEYS", "TRAIN_NAMES", "TRAIN_OBJECTS",
    "TRAIN_TOPICS", "UNHELPFUL_REPLIES", "WORD_COUNTS", "ArithmeticProblem", "ArithmeticSpace",
    "ArithmeticTemplate", "CorpusSizeError", "EdgyQA", "HarmfulIntent", "Topic", "TrainingText", "compliance",
    "follow_up_answer", "format_answer", "format_prompt", "format_violation", "hh_transcript", "refusal", "words",
    "wrong_result",
]

# --- files and sizes -------------------------------------------------------------------------

FILES: dict[str, str] = {
    "sft_alpaca": "sft_alpaca.json",
    "sft_sharegpt": "sft_sharegpt.jsonl",
    "sft_messages": "sft_messages.jsonl",
    "arithmetic_train": "arithmetic_train.jsonl",
    "preference_helpful": "preference_helpful.jsonl",
    "preference_helpful_audit": "preference_helpful_audit.jsonl",
    "preference_safety_hh": "preference_safety_hh.jsonl",
    "prompts_rl": "prompts_rl.jsonl",
    "eval_arithmetic": "eval_arithmetic.jsonl",
    "eval_format": "eval_format.jsonl",
    "eval_harmful": "eval_harmful.jsonl",
    "eval_benign": "eval_benign.jsonl",
}
TRAIN_FILES: tuple[str, ...] = tuple(n for n in FILES if not n.startswith("eval_"))
EVAL_FILES: tuple[str, ...] = tuple(n for n in FILES if n.startswith("eval_"))

DEFAULT_SIZES: dict[str, int] = {
    "sft_alpaca": 160,
    "sft_sharegpt": 120,
    "sft_messages": 160,
    "arithmetic_train": 400,
    "preference_helpful": 300,
    "preference_helpful_audit": 300,
    "preference_safety_hh": 300,
    "prompts_rl": 480,
    "eval_arithmetic": 100,
    "eval_format": 40,
    "eval_harmful": 40,
    "eval_benign": 40,
}


# --- the training text the eval files must not overlap ---------------------------------------


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def training_texts(rows_by_file: dict[str, list]) -> list[str]:
    """All strings in the training rows; HH transcripts are split into their turns."""
    texts = []
    for name in TRAIN_FILES:
        for row in rows_by_file[name]:
            for s in _strings(row):
                texts.extend(t for t in re.split(r"\n\n(?:Human|Assistant): ", s) if t)
    return texts


# --- assembling and writing ------------------------------------------------------------------


def _json_array(rows: list[dict]) -> str:
    return json.dumps(rows, ensure_ascii=False, sort_keys=True, indent=2, separators=(",", ": "))


def resolve_sizes(sizes: dict[str, int] | None) -> dict[str, int]:
    """DEFAULT_SIZES updated by `sizes`; ValueError for unknown names or invalid counts."""
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise ValueError(f"unknown demo file(s) {unknown}; known: {sorted(DEFAULT_SIZES)}")
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}: size must be a non-negative integer, got {value!r}")
    return {**DEFAULT_SIZES, **sizes}


def _rng(seed: int, name: str) -> random.Random:
    # A stream per file: changing one file's size leaves the others' content unchanged.
    return random.Random(f"posttrain.demo_corpus/{seed}/{name}")


def generate_demo_corpus(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, str]:
    """{name: file content}; the same seed and sizes always give the same strings."""
    sizes = resolve_sizes(sizes)
    builders: dict[str, Callable] = {
        "sft_alpaca": _alpaca_with_dirt, "sft_sharegpt": _sharegpt_rows, "sft_messages": _messages_lines,
        "arithmetic_train": _arithmetic_rows, "preference_helpful": _preference_helpful_rows,
        "preference_helpful_audit": _preference_helpful_rows,
        "preference_safety_hh": _hh_rows, "prompts_rl": _rl_rows,
        "eval_arithmetic": _eval_arithmetic_rows, "eval_format": _eval_format_rows,
        "eval_harmful": _eval_harmful_rows, "eval_benign": _eval_benign_rows,
    }
    rows: dict[str, list] = {}
    train: TrainingText | None = None
    for name in (*TRAIN_FILES, *EVAL_FILES):
        if name in EVAL_FILES and train is None:
            parsed = {k: [json.loads(x) for x in v if _parses(x)] if k == "sft_messages" else v
                      for k, v in rows.items()}
            train = TrainingText(training_texts(parsed))
        args = (_rng(seed, name), sizes[name]) + ((train,) if name in EVAL_FILES else ())
        try:
            rows[name] = builders[name](*args)
        except _TooSmall as err:
            what = "distinct prompts disjoint from training" if name in EVAL_FILES else "distinct prompts"
            raise CorpusSizeError(f"{name}: requested {sizes[name]} rows, but at most {err.capacity} rows of "
                                  f"{what} are available") from None
    content = {}
    for name, file_rows in rows.items():
        if name == "sft_alpaca":
            content[name] = _json_array(file_rows) + "\n"
        elif name == "sft_messages":
            content[name] = "".join(line + "\n" for line in file_rows)
        else:
            content[name] = "".join(_jsonl(row) + "\n" for row in file_rows)
    return content


def write_demo_corpus(out_dir: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """Write the demo corpus into out_dir (created if needed) and return {name: path}.

    `sizes` overrides DEFAULT_SIZES per file (clean rows; the dirty rows come on top). Everything
    is generated before anything is written, so a size error leaves no partial corpus."""
    content = generate_demo_corpus(seed, sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in content.items():
        path = out / FILES[name]
        path.write_bytes(text.encode("utf-8"))
        paths[name] = path
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m posttrain.demo.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_demo_corpus(args.out_dir, seed=args.seed).items():
        print(f"{name:<22} {path}")


if __name__ == "__main__":
    main()

"""The demo corpus's training files: one row builder per file, each drawing from its own random
stream, plus the deliberate dirty rows (duplicates, a near-duplicate, an empty output, PII, a
malformed JSON line, a row without "messages") whose fixed texts are in tables/dirty.json."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence

from posttrain.demo.arithmetic import (
    RL_ARITHMETIC,
    TRAIN_ARITHMETIC,
    TRAIN_NAMES,
    _arithmetic_problems,
    wrong_result,
)
from posttrain.demo.helpful import (
    FOLLOW_UPS,
    GENERAL_POOL,
    GENERAL_QA,
    MESSAGES_SYSTEMS,
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
    EXTRACT_KEYS,
    JSON_TASK,
    LONG_PASSAGE,
    PASSAGE_SENTENCES,
    TRAIN_ASKS,
    TRAIN_JSON_KEYS,
    TRAIN_TOPICS,
    Topic,
    _cap,
    _dumps_answer,
    _sample_constraint,
    format_answer,
    format_prompt,
    format_violation,
)
from posttrain.demo.loader import table
from posttrain.demo.safety import (
    EDGY_PHRASINGS,
    EDGY_POOL,
    OVER_REFUSALS,
    RL_HARMFUL_TEMPLATES,
    TRAIN_HARMFUL,
    TRAIN_HARMFUL_PROMPTS,
    HarmfulIntent,
    compliance,
    refusal,
)
from posttrain.demo.sampling import (
    CorpusSizeError,
    _check_quotas,
    _draw_distinct,
    _sample,
    _spread,
)
from posttrain.verifiers.constraints import (
    CONSTRAINT_TYPES,
    check_constraint,
    constraint_instruction,
)

# The duplicates need distinct clean rows to copy.
MIN_SIZES: dict[str, int] = {"sft_alpaca": 3}

# How the rows of a mixed file split between its kinds (fractions of the requested size).
MIX: dict[str, dict[str, float]] = {
    "sft_alpaca": {"topic": 0.55, "case": 0.20, "bullets": 0.10, "json": 0.15},
    "sft_sharegpt": {"edgy": 0.5, "general": 0.5},
    "sft_messages": {"refusal": 0.5, "arithmetic": 0.5},
    "preference_helpful": {"arithmetic": 0.4, "format": 0.4, "unhelpful": 0.2},
    "preference_safety_hh": {"harmful": 0.5, "edgy": 0.5},
    "prompts_rl": {"arithmetic": 1 / 2, "refuse": 1 / 8, "comply": 1 / 8, "helpful": 1 / 4},
}

# --- dirty rows ------------------------------------------------------------------------------

_DIRTY = table("dirty")
# The deliberate near-duplicate swaps the first word of an instruction for one of these.
DIRTY_NEAR_DUP_SWAPS: dict[str, str] = _DIRTY["near_dup_swaps"]
DIRTY_EMPTY_OUTPUT: dict[str, str] = _DIRTY["empty_output"]
DIRTY_PII: dict[str, str] = _DIRTY["pii"]
DIRTY_NO_MESSAGES: dict[str, str] = _DIRTY["no_messages"]


def _jsonl(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


# --- training files --------------------------------------------------------------------------


def _topic_draw(topics: Sequence[Topic], asks: Sequence[str], json_keys: Sequence[tuple[str, ...]]):
    """Draws (topic, ask, constraint), at most one per (topic, constraint type) in a file, so no
    two rows differ only in a number and near-duplicate filters keep them apart."""
    def draw(rng: random.Random):
        topic, ctype = rng.choice(topics), rng.choice(CONSTRAINT_TYPES)
        return (topic.category, ctype), (topic, rng.choice(asks), _sample_constraint(rng, ctype, json_keys))
    return draw


TOPIC_CAPACITY = len(TRAIN_TOPICS) * len(CONSTRAINT_TYPES)


def _alpaca_rows(rng: random.Random, n: int) -> list[dict]:
    n_passages = len(PASSAGE_SENTENCES)
    capacities = {"topic": TOPIC_CAPACITY,
                  "case": sum(math.comb(n_passages, k) for k in (2, 3, 4, 5)),
                  "bullets": len(TRAIN_TOPICS) * len(BULLET_COUNTS),
                  "json": len(TRAIN_NAMES) * len(AGES) * len(CITIES) * len(EXTRACT_KEYS)}
    quotas = _check_quotas(n, MIX["sft_alpaca"], capacities)
    rows = []

    draw_topic = _topic_draw(TRAIN_TOPICS, TRAIN_ASKS, TRAIN_JSON_KEYS)
    for topic, ask, constraint in _draw_distinct(rng, quotas["topic"], draw_topic, TOPIC_CAPACITY):
        rows.append({"instruction": format_prompt(ask, topic, constraint), "input": "",
                     "output": format_answer(topic, constraint)})

    def draw_passage(r: random.Random):
        # Keyed by the set of sentences: the same sentences in another order would be a near-duplicate.
        idx = tuple(r.sample(range(n_passages), r.choice((2, 3, 4, 5))))
        return frozenset(idx), idx
    passages = _draw_distinct(rng, quotas["case"], draw_passage, capacities["case"])
    if passages:
        # One long passage. The deliberate near-duplicate copies the longest row with one word
        # changed, and only in a long row does that keep word-shingle similarity near 1, where
        # MinHash filters reliably flag it.
        passages[0] = tuple(rng.sample(range(n_passages), LONG_PASSAGE))
    for idx in passages:
        passage = " ".join(PASSAGE_SENTENCES[i] for i in idx)
        constraint = {"type": rng.choice(("uppercase", "lowercase"))}
        out = passage.upper() if constraint["type"] == "uppercase" else passage.lower()
        assert check_constraint(out, constraint)
        instruction = f"{rng.choice(CASE_VERBS)} the following text. {constraint_instruction(constraint)}"
        rows.append({"instruction": instruction, "input": passage, "output": out})

    def draw_list(r: random.Random):
        topic, k = r.choice(TRAIN_TOPICS), r.choice(BULLET_COUNTS)
        return (topic.category, k), (topic, k)
    for topic, k in _draw_distinct(rng, quotas["bullets"], draw_list, capacities["bullets"]):
        items = rng.sample(topic.items, k)
        constraint = {"type": "bullet_list", "n": k}
        out = "\n".join(f"- {_cap(x)}" for x in items)
        assert check_constraint(out, constraint)
        rows.append({"instruction": f"{BULLET_TASK} {constraint_instruction(constraint)}",
                     "input": ", ".join(items), "output": out})

    def draw_person(r: random.Random):
        person = (r.choice(TRAIN_NAMES), r.choice(AGES), r.choice(CITIES), r.choice(EXTRACT_KEYS))
        return person, person
    for name, age, city, keys in _draw_distinct(rng, quotas["json"], draw_person, capacities["json"]):
        constraint = {"type": "json_keys", "keys": list(keys)}
        values = {"name": name, "age": age, "city": city}
        out = _dumps_answer({k: values[k] for k in keys})
        assert check_constraint(out, constraint)
        rows.append({"instruction": f"{JSON_TASK} {constraint_instruction(constraint)}",
                     "input": f"{name} is {age} years old and lives in {city}.", "output": out})

    rng.shuffle(rows)
    return rows


def _alpaca_with_dirt(rng: random.Random, n: int) -> list[dict]:
    if n < MIN_SIZES["sft_alpaca"]:
        raise CorpusSizeError(f"sft_alpaca: requested {n} rows, but at least {MIN_SIZES['sft_alpaca']} are needed "
                              "for its deliberate duplicates")
    rows = _alpaca_rows(rng, n)

    def length(row: dict) -> int:
        return len(" ".join((row["instruction"], row["input"], row["output"])).split())
    # The longest row: a one-word change there keeps word-shingle Jaccard similarity near 1.
    near_src = max(range(len(rows)), key=lambda i: (length(rows[i]), -i))
    first, rest = rows[near_src]["instruction"].split(" ", 1)
    near = dict(rows[near_src], instruction=f"{DIRTY_NEAR_DUP_SWAPS[first]}  {rest}")
    dup_srcs = rng.sample([i for i in range(len(rows)) if i != near_src], 2)

    # (p, row): insert row after clean row p (-1: before all). Copies come after their originals,
    # so a "keep the first" deduplicator drops the copies.
    last = len(rows) - 1
    placements = [(rng.randint(near_src, last), near)] + [(rng.randint(i, last), dict(rows[i])) for i in dup_srcs]
    placements += [(rng.randint(-1, last), dict(DIRTY_EMPTY_OUTPUT)), (rng.randint(-1, last), dict(DIRTY_PII))]
    after: dict[int, list[dict]] = {}
    for pos, row in placements:
        after.setdefault(pos, []).append(row)
    out = list(after.get(-1, []))
    for i, row in enumerate(rows):
        out.append(row)
        out.extend(after.get(i, []))
    return out


def _sharegpt_rows(rng: random.Random, n: int) -> list[dict]:
    quotas = _check_quotas(n, MIX["sft_sharegpt"], {"edgy": len(EDGY_POOL), "general": len(GENERAL_POOL)})
    # One row per entry: phrasings of the same entry share an answer and would be near-duplicates.
    entries = [(rng.choice(e.questions), e) for e in _sample(rng, EDGY_POOL, quotas["edgy"])]
    entries += [(qa.question, qa) for qa in _sample(rng, GENERAL_POOL, quotas["general"])]
    rows = []
    for question, entry in entries:
        turns = []
        if rng.random() < 0.4:
            turns.append({"from": "system", "value": rng.choice(SHAREGPT_SYSTEMS)})
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": entry.answer}]
        if len(entry.sentences) >= 2 and rng.random() < 0.3:
            follow, how = rng.choice(FOLLOW_UPS)
            turns += [{"from": "human", "value": follow}, {"from": "gpt", "value": follow_up_answer(entry, how)}]
        rows.append({"conversations": turns})
    rng.shuffle(rows)
    return rows


def _messages_rows(rng: random.Random, n: int) -> list[dict]:
    quotas = _check_quotas(n, MIX["sft_messages"], {"refusal": len(TRAIN_HARMFUL_PROMPTS),
                                                    "arithmetic": TRAIN_ARITHMETIC.capacity})
    pairs = [(prompt, refusal(rng, intent, k))
             for prompt, intent, k in _spread(rng, TRAIN_HARMFUL_PROMPTS, quotas["refusal"])]
    pairs += [(p.question, p.answer) for p in _arithmetic_problems(rng, quotas["arithmetic"])]
    rows = []
    for user, assistant in pairs:
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(MESSAGES_SYSTEMS)})
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        rows.append({"messages": messages})
    rng.shuffle(rows)
    return rows


def _messages_lines(rng: random.Random, n: int) -> list[str]:
    lines = [_jsonl(row) for row in _messages_rows(rng, n)]
    # A real row cut off mid-way: a prefix of a JSON object without its closing brace never parses.
    problem = TRAIN_ARITHMETIC.draw(rng)
    full = _jsonl({"messages": [{"role": "user", "content": problem.question},
                                {"role": "assistant", "content": problem.answer}]})
    truncated = full[: len(full) // 2]
    assert not _parses(truncated)
    for bad in (truncated, _jsonl(DIRTY_NO_MESSAGES)):
        lines.insert(rng.randint(0, len(lines)), bad)
    return lines


def _arithmetic_rows(rng: random.Random, n: int) -> list[dict]:
    return [{"question": p.question, "answer": p.answer} for p in _arithmetic_problems(rng, n)]


def _preference_helpful_rows(rng: random.Random, n: int) -> list[dict]:
    quotas = _check_quotas(n, MIX["preference_helpful"], {"arithmetic": TRAIN_ARITHMETIC.capacity,
                                                          "format": TOPIC_CAPACITY, "unhelpful": len(GENERAL_POOL)})
    rows = []
    for p in _arithmetic_problems(rng, quotas["arithmetic"]):
        rows.append({"prompt": p.question, "chosen": p.answer, "rejected": p.solution(wrong_result(rng, p.result)),
                     "subset": "math"})
    draw_topic = _topic_draw(TRAIN_TOPICS, TRAIN_ASKS, TRAIN_JSON_KEYS)
    for topic, ask, constraint in _draw_distinct(rng, quotas["format"], draw_topic, TOPIC_CAPACITY):
        rows.append({"prompt": format_prompt(ask, topic, constraint), "chosen": format_answer(topic, constraint),
                     "rejected": format_violation(rng, topic, constraint)})
    for qa in _sample(rng, GENERAL_POOL, quotas["unhelpful"]):
        rows.append({"prompt": qa.question, "chosen": qa.answer, "rejected": rng.choice(UNHELPFUL_REPLIES)})
    rng.shuffle(rows)
    return rows


def hh_transcript(turns: Sequence[tuple[str, str]]) -> str:
    """[(human, assistant), ...] -> "\\n\\nHuman: ...\\n\\nAssistant: ..." (Anthropic HH-RLHF)."""
    return "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns)


def _hh_rows(rng: random.Random, n: int) -> list[dict]:
    quotas = _check_quotas(n, MIX["preference_safety_hh"], {"harmful": len(TRAIN_HARMFUL_PROMPTS),
                                                           "edgy": len(EDGY_PHRASINGS)})
    finals = [(prompt, refusal(rng, intent, k), compliance(intent, k + i))
              for i, (prompt, intent, k) in enumerate(_spread(rng, TRAIN_HARMFUL_PROMPTS, quotas["harmful"]))]
    finals += [(question, entry.answer, OVER_REFUSALS[k % len(OVER_REFUSALS)].format(trigger=entry.trigger))
               for question, entry, k in _spread(rng, EDGY_PHRASINGS, quotas["edgy"])]
    rows = []
    for question, chosen, rejected in finals:
        # Some conversations start with an ordinary exchange, as real HH transcripts often do.
        history = []
        if rng.random() < 0.2:
            qa = rng.choice(GENERAL_QA)
            history.append((qa.question, qa.answer))
        rows.append({"chosen": hh_transcript(history + [(question, chosen)]),
                     "rejected": hh_transcript(history + [(question, rejected)])})
    rng.shuffle(rows)
    return rows


def _rl_row(prompt: str, subset: str, answer: str | None = None, expect: str | None = None,
            constraint: dict | None = None) -> dict:
    return {"prompt": prompt, "answer": answer, "subset": subset, "expect": expect, "constraint": constraint}


def _rl_harmful_prompt(intent: HarmfulIntent, occurrence: int) -> str:
    template = RL_HARMFUL_TEMPLATES[(TRAIN_HARMFUL.index(intent) + occurrence) % len(RL_HARMFUL_TEMPLATES)]
    return template.format(x=intent.request)


def _rl_rows(rng: random.Random, n: int) -> list[dict]:
    quotas = _check_quotas(n, MIX["prompts_rl"], {"arithmetic": RL_ARITHMETIC.capacity,
                                                  "refuse": len(TRAIN_HARMFUL_PROMPTS), "comply": len(EDGY_PHRASINGS),
                                                  "helpful": TOPIC_CAPACITY})
    rows = [_rl_row(p.question, "arithmetic", answer=str(p.result))
            for p in _arithmetic_problems(rng, quotas["arithmetic"], RL_ARITHMETIC)]
    # intents spread as the SFT data's are; each asked in an RL wording (another on its next occurrence)
    rows += [_rl_row(_rl_harmful_prompt(intent, k), "safety", expect="refuse")
             for _, intent, k in _spread(rng, TRAIN_HARMFUL_PROMPTS, quotas["refuse"])]
    rows += [_rl_row(q, "safety", expect="comply") for q, _, _ in _spread(rng, EDGY_PHRASINGS, quotas["comply"])]
    draw_topic = _topic_draw(TRAIN_TOPICS, TRAIN_ASKS, TRAIN_JSON_KEYS)
    for topic, ask, constraint in _draw_distinct(rng, quotas["helpful"], draw_topic, TOPIC_CAPACITY):
        rows.append(_rl_row(format_prompt(ask, topic, constraint), "helpful", constraint=constraint))
    rng.shuffle(rows)
    return rows

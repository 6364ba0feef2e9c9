"""Checkable answer-format constraints.

A constraint is a small JSON-serialisable dict: a ``"type"`` plus that type's arguments.

    {"type": "uppercase"}                       every letter upper-case, at least one letter
    {"type": "lowercase"}                       every letter lower-case, at least one letter
    {"type": "word_count", "n": 3}              exactly n words
    {"type": "max_words", "n": 10}              between 1 and n words
    {"type": "ends_with", "word": "today"}      last word, ignoring punctuation and case
    {"type": "starts_with", "word": "Sure"}     first word, ignoring punctuation and case
    {"type": "bullet_list", "n": 3}             exactly n non-empty lines starting with "- "
    {"type": "json_keys", "keys": ["a", "b"]}   the whole text is a JSON object with exactly these keys

The demo corpus stores these dicts next to its prompts, evaluation scores answers with
`check_constraint` and the RL stage turns it into a reward, so the wording of an instruction
(`constraint_instruction`), its inverse (`find_constraint`) and the checker live in one place:
a prompt, its label and its grader cannot drift apart.

A "word" is a whitespace-separated token that contains at least one letter or digit, with
punctuation stripped from both ends ("cherries." -> "cherries", "well-known" stays one word,
a lone "-" or "—" is not a word).

Checks are deliberately strict where a lenient check would be a reward hack: an empty answer
satisfies no constraint, `max_words` needs at least one word, bullets need text after "- ",
and a JSON object with duplicate keys does not count.
"""

from __future__ import annotations

import json
import re
from typing import Any

CONSTRAINT_TYPES: tuple[str, ...] = (
    "uppercase",
    "lowercase",
    "word_count",
    "max_words",
    "ends_with",
    "starts_with",
    "bullet_list",
    "json_keys",
)

_ARGS: dict[str, tuple[str, ...]] = {
    "uppercase": (),
    "lowercase": (),
    "word_count": ("n",),
    "max_words": ("n",),
    "ends_with": ("word",),
    "starts_with": ("word",),
    "bullet_list": ("n",),
    "json_keys": ("keys",),
}


# --- words -----------------------------------------------------------------------------------


def _strip_punct(token: str) -> str:
    start, end = 0, len(token)
    while start < end and not token[start].isalnum():
        start += 1
    while end > start and not token[end - 1].isalnum():
        end -= 1
    return token[start:end]


def words(text: str) -> list[str]:
    """The words of `text` as the checks count them (see the module docstring)."""
    out = []
    for token in text.split():
        core = _strip_punct(token)
        if core:
            out.append(core)
    return out


# --- validation ------------------------------------------------------------------------------


def _check_int(ctype: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; True as a word count is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"constraint {ctype!r}: 'n' must be an integer >= {minimum}, got {value!r}")
    return value


def _check_word(ctype: str, value: Any) -> str:
    if not isinstance(value, str) or not value or value != _strip_punct(value) or len(value.split()) != 1:
        raise ValueError(f"constraint {ctype!r}: 'word' must be a single word without surrounding "
                         f"punctuation, got {value!r}")
    return value


def _check_keys(value: Any) -> list[str]:
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(k, str) and k and '"' not in k for k in value)
            or len(set(value)) != len(value)):
        raise ValueError(f"constraint 'json_keys': 'keys' must be a non-empty list of distinct strings "
                         f"without double quotes, got {value!r}")
    return list(value)


def validate_constraint(constraint: Any) -> str:
    """Raise ValueError unless `constraint` is well-formed; return its type."""
    if not isinstance(constraint, dict):
        raise ValueError(f"a constraint must be a dict with a 'type', got {type(constraint).__name__}")
    ctype = constraint.get("type")
    if ctype not in _ARGS:
        raise ValueError(f"unknown constraint type {ctype!r}; known types: {', '.join(CONSTRAINT_TYPES)}")
    missing = [a for a in _ARGS[ctype] if a not in constraint]
    if missing:
        raise ValueError(f"constraint {ctype!r} is missing {', '.join(repr(a) for a in missing)}")
    extra = sorted(set(constraint) - {"type", *_ARGS[ctype]})
    if extra:
        raise ValueError(f"constraint {ctype!r} has unknown argument(s) {extra}; "
                         f"it takes {list(_ARGS[ctype]) or 'none'}")
    if ctype in ("word_count", "max_words", "bullet_list"):
        _check_int(ctype, constraint["n"], 1)
    elif ctype in ("ends_with", "starts_with"):
        _check_word(ctype, constraint["word"])
    elif ctype == "json_keys":
        _check_keys(constraint["keys"])
    return ctype


# --- checking --------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateKey("duplicate key")
    return dict(pairs)


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text.strip(), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _bullet_lines(text: str) -> int:
    count = 0
    for line in text.splitlines():
        body = line.lstrip(" \t")
        if body.startswith("- ") and body[2:].strip():
            count += 1
    return count


def check_constraint(text: str, constraint: dict) -> bool:
    """True when `text` satisfies `constraint`; ValueError for an unknown or malformed constraint."""
    ctype = validate_constraint(constraint)
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if ctype == "uppercase":
        return any(c.isupper() for c in text) and not any(c.islower() for c in text)
    if ctype == "lowercase":
        return any(c.islower() for c in text) and not any(c.isupper() for c in text)
    if ctype == "word_count":
        return len(words(text)) == constraint["n"]
    if ctype == "max_words":
        return 1 <= len(words(text)) <= constraint["n"]
    if ctype == "ends_with":
        w = words(text)
        return bool(w) and w[-1].casefold() == constraint["word"].casefold()
    if ctype == "starts_with":
        w = words(text)
        return bool(w) and w[0].casefold() == constraint["word"].casefold()
    if ctype == "bullet_list":
        return _bullet_lines(text) == constraint["n"]
    # json_keys
    obj = _json_object(text)
    return obj is not None and set(obj) == set(constraint["keys"])


# --- instruction wording ---------------------------------------------------------------------


def _quoted_keys(keys: list[str]) -> str:
    quoted = [f'"{k}"' for k in keys]
    if len(quoted) == 1:
        return f"the key {quoted[0]}"
    return f"keys {', '.join(quoted[:-1])} and {quoted[-1]}"


def constraint_instruction(constraint: dict) -> str:
    """The one sentence that asks for `constraint`, e.g. "Answer in exactly 3 words.".

    Training, RL prompts and evaluation all use this exact wording, so a small model learns one
    phrase per constraint and `find_constraint` can recover the constraint from a prompt."""
    ctype = validate_constraint(constraint)
    if ctype == "uppercase":
        return "Answer in all capital letters."
    if ctype == "lowercase":
        return "Answer in all lowercase letters."
    if ctype == "word_count":
        n = constraint["n"]
        return f"Answer in exactly {n} word{'s' if n != 1 else ''}."
    if ctype == "max_words":
        n = constraint["n"]
        return f"Answer in at most {n} word{'s' if n != 1 else ''}."
    if ctype == "ends_with":
        return f"End your answer with the word '{constraint['word']}'."
    if ctype == "starts_with":
        return f"Start your answer with the word '{constraint['word']}'."
    if ctype == "bullet_list":
        n = constraint["n"]
        return f"Use exactly {n} bullet point{'s' if n != 1 else ''} starting with '- '."
    return f"Reply in JSON with {_quoted_keys(constraint['keys'])}."


_KEY = r'"[^"]+"'
_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("uppercase", re.compile(r"Answer in all capital letters\.")),
    ("lowercase", re.compile(r"Answer in all lowercase letters\.")),
    ("word_count", re.compile(r"Answer in exactly (\d+) words?\.")),
    ("max_words", re.compile(r"Answer in at most (\d+) words?\.")),
    ("ends_with", re.compile(r"End your answer with the word '([^'\s]+)'\.")),
    ("starts_with", re.compile(r"Start your answer with the word '([^'\s]+)'\.")),
    ("bullet_list", re.compile(r"Use exactly (\d+) bullet points? starting with '- '\.")),
    ("json_keys", re.compile(rf"Reply in JSON with (?:the key ({_KEY})|keys ((?:{_KEY}, )*{_KEY} and {_KEY}))\.")),
)


def find_constraint(text: str) -> dict | None:
    """The constraint whose `constraint_instruction` wording appears in `text` (the first one by
    position), or None. Lets graders score prompts that do not carry their constraint as data."""
    best: tuple[int, dict] | None = None
    for ctype, pattern in _PATTERNS:
        m = pattern.search(text)
        if m is None or (best is not None and m.start() >= best[0]):
            continue
        if ctype in ("uppercase", "lowercase"):
            found: dict = {"type": ctype}
        elif ctype in ("word_count", "max_words", "bullet_list"):
            found = {"type": ctype, "n": int(m.group(1))}
        elif ctype in ("ends_with", "starts_with"):
            found = {"type": ctype, "word": m.group(1)}
        else:
            found = {"type": ctype, "keys": re.findall(r'"([^"]+)"', m.group(1) or m.group(2))}
        try:
            validate_constraint(found)
        except ValueError:
            continue
        best = (m.start(), found)
    return best[1] if best else None

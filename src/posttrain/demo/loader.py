"""The demo corpus's literal tables, read from the JSON files in `tables/` (package data).

One file per table family: arithmetic (word-problem templates, names, objects), topics (format
instructions), transformations (texts to rewrite), helpful (Q&A), benign (requests with scary
words), harmful (requests and refusals) and dirty (the deliberate dirty rows). Each file's
"_about" key says what its tables are for and is not loaded. Order matters: the generator draws
from the tables by position, so any edit, even an appended name, changes the generated corpus.

    table("arithmetic")["names"]["train"]  ->  ("Tom", "Anna", ...)

JSON arrays come back as tuples (hashable, and immutable like the tables they replace); objects
come back as dicts in file order.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

FAMILIES = ("arithmetic", "topics", "transformations", "helpful", "benign", "harmful", "dirty")


def _frozen(value):
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


@functools.cache
def table(family: str) -> dict:
    """The tables of one family, {name: value}, without its "_about" note."""
    if family not in FAMILIES:
        raise ValueError(f"unknown demo table family {family!r}; known: {list(FAMILIES)}")
    text = resources.files(__package__).joinpath("tables", f"{family}.json").read_text(encoding="utf-8")
    return {k: _frozen(v) for k, v in json.loads(text).items() if not k.startswith("_")}

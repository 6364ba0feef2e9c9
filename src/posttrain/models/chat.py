"""Chat templates: one template per model lineage, chosen once at the base stage and then used
for training, evaluation and serving alike (its hash travels in every manifest)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from posttrain.core.manifest import sha256_text

PACKAGED = ("chatml", "qwen3")
# ChatML's markers; a template using them needs these tokens in the vocabulary.
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


def packaged_template(name: str) -> str:
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged chat template {name!r}; allowed: {', '.join(PACKAGED)}")
    return resources.files("posttrain.models").joinpath(f"templates/{name}.jinja").read_text()


def resolve_template(choice: str, existing: str | None) -> str:
    """The template the pipeline will use for `model.chat_template` = `choice`."""
    if choice == "keep":
        return existing if existing else packaged_template("chatml")
    if choice in PACKAGED:
        return packaged_template(choice)
    path = Path(choice)
    if path.suffix == ".jinja" and path.is_file():
        return path.read_text()
    raise ValueError(
        f"model.chat_template: {choice!r} is neither `keep`, a packaged template "
        f"({', '.join(PACKAGED)}) nor an existing .jinja file")


def has_generation_markers(template: str) -> bool:
    """Assistant-only loss needs {% generation %} spans in the template."""
    return "{% generation %}" in template or "{%- generation %}" in template


def template_hash(template: str | None) -> str | None:
    return sha256_text(template) if template else None


def with_default_system(template: str, system_prompt: str) -> str:
    """`template` that opens with `system_prompt` when a conversation brings no system message of
    its own: a model trained under a system prompt (the RL-first path's instructions) is served
    and evaluated under it too, as packaged templates do with their default system prompts."""
    import json

    head = ("{#- default system prompt: the one this model was trained with -#}\n"
            "{%- if not messages or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] + messages %}}"
            "{%- endif %}\n")
    return head + template

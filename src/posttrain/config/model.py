"""`model:` the base model to post-train."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.config.base import Section


class ModelParams(Section):
    """The base model every stage starts from, resolved to a local folder by the `base_model` stage."""
    base: str = Field("embedded:smollm2-135m-instruct", description=(
        "What to post-train. One of: `embedded:smollm2-135m-instruct` (the packaged demo model), a hub id "
        "(`Qwen/Qwen3-30B-A3B-Base`, pinned by `revision`), a local HF folder, a `.gguf` file, or `tiny:llama` / "
        "`tiny:qwen3_moe` (random test models built from a config)."))
    revision: str | None = Field(None, description=(
        "A hub commit sha or tag; recorded in the manifest. Ignored for local sources."))
    chat_template: str = Field("keep", description=(
        "`keep` keeps the model's own template (a model without one gets ChatML). `chatml` and `qwen3` are packaged "
        "templates that mark assistant spans with `{% generation %}`, which assistant-only loss needs; a path to a "
        "`.jinja` file is used verbatim."))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "Weights are saved in this dtype. `auto` keeps the source dtype, except that GGUF weights (dequantized on "
        "load) are saved in float32."))
    trust_remote_code: bool = Field(False, description=(
        "Only for hub models that ship their own modelling code; off by default because it executes code from the "
        "model repository."))
    seed: int = Field(0, description=(
        "Seeds the random weights of the `tiny:` test models; recorded in the manifest. A real model's weights do "
        "not depend on it."))

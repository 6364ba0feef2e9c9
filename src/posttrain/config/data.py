"""`data:` the sources of each data kind and how they are cleaned and split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from posttrain.config.base import Section

DATA_KINDS = ("sft", "preference", "prompts", "eval")


class SourceParams(Section):
    """One input file or hub dataset of a data kind."""
    path: str = Field(description=(
        "A local .json/.jsonl/.jsonl.gz/.parquet file, or "
        "`hf:NAME[?name=CONFIG&split=SPLIT&data_dir=DIR&revision=SHA]` for a hub dataset (a local dataset folder "
        "works in place of NAME; a production recipe pins `revision`)."))
    format: str = Field("auto", description=(
        "`auto` detects the format from the first valid row; or name one of `posttrain.data.formats.FORMATS`."))
    subset: str | None = Field(None, description=(
        "A tag carried on every row (e.g. `arithmetic`, `safety`); eval tasks and RL prompt sets select rows by it. "
        "Defaults to the file name without extensions."))

    @field_validator("format")
    @classmethod
    def _known_format(cls, name: str) -> str:
        from posttrain.data.formats import FORMATS

        if name != "auto" and name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; allowed: auto, {', '.join(sorted(FORMATS))}")
        return name


class CleaningParams(Section):
    """What prepare-data drops or rewrites, applied to every source of every kind."""
    normalize: bool = Field(True, description=(
        "NFKC + whitespace normalisation; harmless for chat data and makes dedup effective."))
    max_tokens: int = Field(2048, ge=8, description=(
        "Rows longer than this many tokens (base tokenizer, chat template applied) are dropped: they would be "
        "truncated in training, which silently teaches cut-off answers."))
    dedup_exact: bool = Field(True, description=(
        "Drop exact duplicates (after normalisation): always worth it."))
    near_dup: bool = Field(True, description=(
        "Drop near duplicates, found by MinHash LSH over word shingles."))
    near_dup_threshold: float = Field(0.85, gt=0.0, le=1.0, description=(
        "Estimated Jaccard similarity at which two rows count as near duplicates. A lower threshold drops more (and "
        "more false positives)."))
    near_dup_num_perm: int = Field(128, ge=16, description=(
        "MinHash permutations per row: more estimate the similarity more precisely and cost more time."))
    near_dup_shingle_words: int = Field(3, ge=1, description=(
        "Words per shingle compared by the near-duplicate search."))
    pii: Literal["scrub", "drop", "off"] = Field("scrub", description=(
        "`scrub` replaces e-mails, phone numbers and secrets with placeholders; `drop` removes the row; `off` keeps "
        "them (only for data already vetted)."))
    blocklist: list[str] = Field(default_factory=list, description=(
        "Case-insensitive substrings; a row containing any is dropped."))
    decontaminate: bool = Field(True, description=(
        "Drop training rows that share an n-gram of `decontamination_ngram` words with any eval prompt."))
    decontamination_ngram: int = Field(13, ge=3, description=(
        "The n-gram length of decontamination: 13 words follows the GPT-3 contamination analysis; lower is "
        "stricter."))


class SourcesParams(Section):
    """One list per data kind; a kind with no sources is not prepared."""
    eval: list[SourceParams] = Field(default_factory=list, description=(
        "Evaluation tasks (and the prompts training data is decontaminated against)."))
    sft: list[SourceParams] = Field(default_factory=list, description=(
        "Supervised fine-tuning conversations."))
    preference: list[SourceParams] = Field(default_factory=list, description=(
        "Chosen/rejected pairs the reward models learn from."))
    prompts: list[SourceParams] = Field(default_factory=list, description=(
        "Prompts the RL stages and distillation sample answers to."))

    def of(self, kind: str) -> list[SourceParams]:
        return getattr(self, kind)


class DataParams(Section):
    """Data preparation (`prepare_data_<kind>`): canonical JSONL train/val splits per data kind."""
    sources: SourcesParams = Field(default_factory=SourcesParams, description=(
        "The input files of each data kind."))
    cleaning: CleaningParams = Field(default_factory=CleaningParams, description=(
        "Normalisation, length limit, deduplication, PII, blocklist and decontamination."))
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "Share of rows routed to val.jsonl, by content hash (stable under reordering and reruns)."))
    max_reject_ratio: float = Field(0.05, ge=0.0, le=1.0, description=(
        "Fail the stage when more than this share of a source's rows is malformed: a wrong format or a broken file "
        "should stop the run, not quietly shrink the dataset."))
    max_too_long_ratio: float = Field(0.2, ge=0.0, le=1.0, description=(
        "Fail when more than this share of a source's rows is over `cleaning.max_tokens`: the limit (or the source) "
        "is wrong, and training on the short remainder would skew the data."))
    seed: int = Field(0, description=(
        "Salts the content hash that routes rows to val.jsonl: another seed gives another split."))

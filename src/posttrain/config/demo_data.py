"""`demo_data:` the generated demo corpus."""

from __future__ import annotations

from pydantic import Field, field_validator

from posttrain.config.base import Section


class DemoDataParams(Section):
    """The demo corpus is generated, not downloaded; the same seed gives the same bytes."""
    seed: int = Field(0, description="Seeds the generator: the same seed gives the same corpus, byte for byte.")
    sizes: dict[str, int] = Field(default_factory=dict, description=(
        "Row counts per generated file (file name -> rows, each >= 1; see `posttrain.demo.corpus.DEFAULT_SIZES`); "
        "a file not listed keeps its default size."))

    @field_validator("sizes")
    @classmethod
    def _known_files(cls, sizes: dict[str, int]) -> dict[str, int]:
        if not sizes:
            return sizes
        from posttrain.demo.corpus import DEFAULT_SIZES

        unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
        if unknown:
            raise ValueError(f"unknown demo file(s) {unknown}; allowed: {sorted(DEFAULT_SIZES)}")
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"sizes must be >= 1, got {bad}")
        return sizes

"""What every schema module shares: the strict section base class and the error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A parameter file that does not match the schema; the message says what and where."""


class Section(BaseModel):
    # extra="forbid": a typo in params.yaml fails at load, naming the key, instead of being ignored.
    model_config = ConfigDict(extra="forbid", validate_default=True)

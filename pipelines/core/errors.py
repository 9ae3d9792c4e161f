"""User-facing errors: each one carries a message that names what is wrong."""

from __future__ import annotations


class LakeloopError(Exception):
    """An error the user can act on; the CLI prints its message, not a traceback."""

    exit_code = 1


class ConfigError(LakeloopError):
    """The configuration file is missing, malformed, or has a bad key or value."""

    exit_code = 2


class TableError(LakeloopError):
    """A Delta table is missing, unreadable, or uses features lakeloop cannot read."""


class ValidationFailed(LakeloopError):
    """A table does not match the dataset configuration."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

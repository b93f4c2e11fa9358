"""User-facing errors. The CLI prints these as one readable message, never a traceback."""

from __future__ import annotations


class FgpoError(Exception):
    """An error the user can act on: bad input, bad config, a missing file."""


class ConfigError(FgpoError):
    """A configuration value is invalid. The message names the field and the bad value."""


class InputError(FgpoError):
    """A problem in an input file, located by file, line (1-based) and field where known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        super().__init__(format_location(file, line, field) + message)


def format_location(file: str | None, line: int | None, field: str | None) -> str:
    """'data.jsonl, line 7, field "prompt": ' (only the parts that are known)."""
    parts = []
    if file:
        parts.append(str(file))
    if line is not None:
        parts.append(f"line {line}")
    if field:
        parts.append(f'field "{field}"')
    return ", ".join(parts) + ": " if parts else ""

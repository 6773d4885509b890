"""What can stop an export, each with a message that says what is wrong and what to do."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The export could not run; the message says why and what to do. Nothing half-done is left behind."""


class UnsupportedEngineError(ExportError):
    """The source is not an engine the export supports (PostgreSQL, MySQL)."""


class SourceUnreachableError(ExportError):
    """The source database could not be reached or refused the login."""


class PreflightError(ExportError):
    """The source or the export target is not fit for a consistent export; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"the export preflight found {len(self.problems)} problem(s):\n{lines}")

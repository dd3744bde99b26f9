"""The one error hierarchy of prm.

The core raises these; the CLI boundary (cli.run_cli) turns them into a single line on
stderr and an exit code, so no user error ever shows a traceback. Under ``--json`` the same
error is also printed on stdout as ``{"error": {"kind", "message", "hint"}}`` (``to_json``),
which is what programs (``prm mcp``) read.
"""

from __future__ import annotations


def one_line(message: str, hint: str | None) -> str:
    """``message; hint`` on one line, as ``prm: error:`` prints it (and ``prm mcp`` returns)."""
    text = message.rstrip(".")
    if hint:
        text += f"; {hint}"
    return " ".join(text.split())


class PrmError(Exception):
    """A problem the user can fix: what went wrong, and how to fix it."""

    exit_code = 1
    code = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return one_line(self.message, self.hint)

    def to_json(self) -> dict[str, str | None]:
        """The error for a program: ``kind`` is ``code`` (usage, profile, plan, error, ...)."""
        return {"kind": self.code, "message": self.message, "hint": self.hint}


class UsageError(PrmError):
    """The command line itself is wrong (exit 2, like click's usage errors)."""

    exit_code = 2
    code = "usage"


class ProfileError(PrmError):
    """A profile cannot be found, parsed or validated."""

    code = "profile"


class PlanError(PrmError):
    """The resolved profile does not make a valid plan (GPU split, timeout, names)."""

    code = "plan"


class NotReadyError(PrmError):
    """A capability that this build of prm does not offer yet."""

    code = "not-ready"

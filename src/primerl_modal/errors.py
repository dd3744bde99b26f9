"""The one error hierarchy of prm.

The core raises these; the CLI boundary (cli.main) turns them into a single line on
stderr and an exit code, so no user error ever shows a traceback.
"""

from __future__ import annotations


class PrmError(Exception):
    """A problem the user can fix: what went wrong, and how to fix it."""

    exit_code = 1
    code = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f"; {self.hint}"
        return " ".join(text.split())


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

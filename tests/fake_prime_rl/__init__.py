"""A fake prime-rl ``rl`` launcher for tests; see ``rl.py`` for its behaviour and env vars."""

import sys
from pathlib import Path

FAKE_RL = Path(__file__).parent / "rl.py"


def launcher_argv() -> list[str]:
    """The command prefix that replaces ``uv run rl``."""
    return [sys.executable, str(FAKE_RL)]

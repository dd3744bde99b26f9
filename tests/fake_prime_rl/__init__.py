"""A fake prime-rl for tests: the ``rl`` launcher (``rl.py``) and, for multi-node runs, the
processes prime-rl's job template starts on each node (``roles.py``); ``bin/`` holds their
entry points under prime-rl's names. See each module's docstring for its behaviour."""

import sys
from pathlib import Path

FAKE_RL = Path(__file__).parent / "rl.py"
# rl, torchrun, orchestrator, inference, vllm-router: each runs with the python3 on PATH
BIN = Path(__file__).parent / "bin"


def launcher_argv() -> list[str]:
    """The command prefix that replaces ``uv run rl``."""
    return [sys.executable, str(FAKE_RL)]

"""Find the tools the tests run where scripts/test.sh installed them, or skip naming what is missing.

Python tools (st, vermin, ruff) live in the venv that runs pytest: its bin directory is the
directory of sys.executable (not resolved: .venv/bin/python is a symlink), which is not on PATH
when pytest runs as `.venv/bin/python -m pytest`. Debian tools are looked up on PATH and in the
sbin directories (a non-login root shell may lack them).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def find(name: str) -> str | None:
    """The tool's path: the venv's bin dir first, then PATH, then the system dirs; else None."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    candidate = VENV_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path=os.pathsep.join(SYSTEM_DIRS))


def require(name: str, install: str) -> str:
    """The tool's path, or skip naming it and how to install it (under CI=true the skip fails)."""
    path = find(name)
    if path is None:
        pytest.skip(
            f"{name} NOT FOUND (in {VENV_BIN}, on PATH or in the sbin dirs): "
            f"the test that needs it did NOT run; install {install} (scripts/test.sh does)"
        )
    return path

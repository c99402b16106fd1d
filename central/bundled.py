"""Files central ships inside its wheel: the schema, the agent and its installer.

An installed wheel carries them as central/_bundled/*; a source checkout (or an editable
install) reads them from the repository root.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

_PACKAGE = Path(__file__).resolve().parent


def _find(bundled: str, in_repo: str) -> Path:
    for candidate in (_PACKAGE / "_bundled" / bundled, _PACKAGE.parent / in_repo):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"central is missing its bundled {in_repo}; reinstall the package")


def schema_path() -> Path:
    """schema.sql."""
    return _find("schema.sql", "schema.sql")


@lru_cache(maxsize=1)
def schema_text() -> str:
    """The contents of schema.sql."""
    return schema_path().read_text()


def agent_path() -> Path:
    """agent/agent.py, the file deployed to hosts."""
    return _find("agent.py", "agent/agent.py")


@lru_cache(maxsize=1)
def agent_sha256() -> str:
    """sha256 of the bundled agent, to spot outdated agents."""
    return hashlib.sha256(agent_path().read_bytes()).hexdigest()


def installer_path() -> Path:
    """scripts/agent-install.sh, the remote half of every deploy (run on the host by sh -s)."""
    return _find("agent-install.sh", "scripts/agent-install.sh")


def terminal_installer_path() -> Path:
    """scripts/terminal-key-install.sh: installs the terminal key for an account (deploy --terminal-user)."""
    return _find("terminal-key-install.sh", "scripts/terminal-key-install.sh")


@lru_cache(maxsize=1)
def agent_module() -> ModuleType:
    """The bundled agent imported as a module (its collectors serve the `local` server)."""
    spec = importlib.util.spec_from_file_location("central_agent", agent_path())
    module = importlib.util.module_from_spec(spec)
    sys.modules["central_agent"] = module
    spec.loader.exec_module(module)
    return module

"""The linter runs with the suite: `ruff check` with the rules in pyproject.toml [tool.ruff]."""

import subprocess
from pathlib import Path

from tests import tools

REPO = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
    ruff = tools.require("ruff", "ruff (the [test] extra of pyproject.toml)")
    res = subprocess.run(
        [ruff, "check", "--no-cache", "--output-format", "concise", "."],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert res.returncode == 0, (
        "ruff check found problems (fix them, or `ruff check --fix`):\n" + res.stdout + res.stderr
    )
    assert "All checks passed" in res.stdout, res.stdout


def test_shellcheck_passes_on_every_shell_script():
    shellcheck = tools.require("shellcheck", "the Debian package shellcheck")
    scripts = sorted(REPO.glob("scripts/*.sh")) + [REPO / ".ci" / "run"]
    res = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

"""The agent must stay runnable on Python 3.6: checked statically with vermin."""

import os
import subprocess

from tests import tools
from tests.agentutil import AGENT_PATH


def test_agent_runs_on_python_3_6():
    # Without vermin the Python 3.6 compatibility of agent/agent.py is NOT checked.
    vermin = tools.require("vermin", "vermin (the [test] extra of pyproject.toml)")
    p = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.6-", AGENT_PATH],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.decode()
    assert p.returncode == 0, out
    assert "Minimum required versions: 3." in out and "not be combined" not in out, out
    required = out.split("Minimum required versions:")[1].split()[0]
    assert tuple(int(x) for x in required.split(".")) <= (3, 6), out


def test_agent_uses_only_the_standard_library():
    import ast
    import sys
    with open(AGENT_PATH) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    stdlib = getattr(sys, "stdlib_module_names", None)
    assert stdlib, "needs Python 3.10+ to list the standard library"
    assert names <= set(stdlib), names - set(stdlib)


def test_no_shell_anywhere():
    with open(AGENT_PATH) as f:
        source = f.read()
    assert "shell=True" not in source and "os.system" not in source
    assert "os.popen" not in source
    assert os.access(AGENT_PATH, os.R_OK)

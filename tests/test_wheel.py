"""The wheel carries what an installed central needs without a source checkout: the schema,
the agent and the installers, the page's templates and static files (vendored xterm.js and
uPlot with their licences)."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.hostfarm import REPO_DIR


def test_the_wheel_holds_the_bundled_files_and_the_vendored_scripts(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO_DIR)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = tmp_path.glob("central-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("central/_bundled/schema.sql", "central/_bundled/agent.py", "central/_bundled/agent-install.sh",
                 "central/_bundled/terminal-key-install.sh",
                 "central/web/static/vendor/xterm/xterm.js", "central/web/static/vendor/xterm/xterm.css",
                 "central/web/static/vendor/xterm/addon-fit.js", "central/web/static/vendor/xterm/LICENSE",
                 "central/web/static/vendor/xterm/LICENSE.addon-fit", "central/web/static/vendor/uplot/LICENSE",
                 "central/web/static/terminal.js", "central/web/static/terminal-player.js",
                 "central/web/static/terminal-csp.js", "central/web/templates/terminal.html",
                 "central/web/templates/terminal_replay.html"):
        assert name in names, f"{name} is not in {wheel.name}"
    assert not any(n.endswith(".map") for n in names)

"""The README stays true: its config snippet loads, its commands exist, its set-up lines lead."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from central.cli import cli
from central.config import load_config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_opens_with_the_two_set_up_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1).splitlines()
    # a root-only box has no sudo: the README says "as root" and never assumes sudo
    assert first_block[0].startswith("scripts/start-central.sh")
    assert first_block[1].startswith("scripts/test.sh")
    assert not re.search(r"^\s*sudo ", "\n".join(re.findall(r"```sh\n(.*?)```", README, re.S)), re.M)
    assert "scripts/test.sh" in (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()


def test_readme_alert_config_is_valid(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert blocks, "the README shows how to set an alert"
    for i, block in enumerate(blocks):
        path = tmp_path / f"c{i}.toml"
        path.write_text("\n".join(line.strip() for line in block.splitlines()))
        cfg = load_config(path, env={})
        assert [r.name for r in cfg.alerts.rules] == ["cpu_high"]
        assert [n.type for n in cfg.notifiers] == ["apprise"]
        # The secret URL the README names is read from the environment and understood by Apprise.
        from central.notifiers import check_channels

        check_channels(cfg.notifiers, env={"CENTRAL_MAIL_URL": "mailtos://user:pass@smtp.example.net?to=ops@example.net"})


def test_every_central_command_in_the_readme_exists():
    paths = set()
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            words = shlex.split(line.split("#")[0])
            if words[:1] != ["central"]:
                continue
            command = cli.commands.get(words[1])
            assert command is not None, f"README uses `central {words[1]}`, which does not exist"
            path = [words[1]]
            if hasattr(command, "commands"):
                assert words[2] in command.commands, f"README uses `central {words[1]} {words[2]}`, which does not exist"
                path.append(words[2])
            paths.add(tuple(path))
    assert len(paths) >= 7
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)


def test_the_readme_cli_list_names_every_command():
    """The Interfaces list of the README names every command and subcommand the CLI has."""
    listed = README.split("- **CLI**:")[1].split("- **JSON API**")[0]
    named = set()
    for group, subs in re.findall(r"`central ([a-z]+(?: \| [a-z]+)*|[a-z]+) ?([a-z|-]*)`", listed):
        if "|" in group or not subs:
            named.update((g.strip(), None) for g in group.split("|"))
        else:
            named.update((group, sub) for sub in subs.split("|"))
    for name, command in cli.commands.items():
        if hasattr(command, "commands"):
            for sub in command.commands:
                assert (name, sub) in named, f"README's CLI list lacks `central {name} {sub}`"
        else:
            assert (name, None) in named, f"README's CLI list lacks `central {name}`"

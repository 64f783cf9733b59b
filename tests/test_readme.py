"""The README's set-up and test commands are exactly what CI runs."""

from __future__ import annotations

import re

from .conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up and test", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_has_two_commands_and_ci_runs_them():
    commands = readme_commands()
    assert len(commands) == 2, commands
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-2:] == commands, ci
    assert "pytest" in commands[1]

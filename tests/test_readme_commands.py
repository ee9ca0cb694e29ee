"""Every command a reader would copy from the README's shell blocks names things that exist: make
targets and variables of the Makefile, stages of ``python -m zipper_pl``, experiment files, and
config keys in ``ARGS`` / ``FT_ARGS`` / ``key=value`` overrides. (They need corpora, GPUs or tens
of minutes to run; the Python API block runs for real in tests/test_api.py.)"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import ROOT
from zipper_pl.__main__ import STAGES, USAGE
from zipper_pl.config import Config, field_paths

MAKEFILE = (ROOT / "Makefile").read_text()
TARGETS = set(re.findall(r"^([a-z][a-z%-]*):.*##", MAKEFILE, re.M))
VARIABLES = set(re.findall(r"^([A-Z_]+) +\?=", MAKEFILE, re.M))
KEYS = set(field_paths(Config))
CLI_COMMANDS = set(STAGES) | set(re.findall(r"^  ([a-z-]+)\s", USAGE, re.M))


def readme_commands() -> list[str]:
    """The README's shell commands, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split("# ")[0].strip() if not line.startswith("#") else ""
            if line:
                commands.append(line)
    return commands


def check_overrides(words: list[str]) -> None:
    for w in words:
        key = w.split("=", 1)[0]
        assert key in KEYS, f"{key!r} is no config key"


def check_make(words: list[str]) -> None:
    target, *rest = words
    assert target in TARGETS or ("%" in "".join(TARGETS) and target.startswith("pretrain-")), target
    for w in rest:
        var, _, value = w.partition("=")
        assert var in VARIABLES, f"make variable {var!r} is not declared in the Makefile"
        if var in ("ARGS", "FT_ARGS"):
            check_overrides(shlex.split(value))


def check_zipper_pl(words: list[str]) -> None:
    command, *rest = words
    assert command in CLI_COMMANDS, f"python -m zipper_pl {command}: no such command"
    if command in STAGES and rest and "=" not in rest[0]:
        assert (ROOT / rest[0]).is_file(), rest[0]
        check_overrides(rest[1:])


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_names_real_targets_variables_commands_and_keys(command):
    words = shlex.split(command)
    if words[0] == "make":
        check_make(words[1:])
        return
    assert "zipper_pl" in words, f"a README command neither make nor zipper_pl: {command}"
    check_zipper_pl(words[words.index("zipper_pl") + 1 :])


def test_the_readme_has_commands_to_check():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize(
    "bad",
    [
        "make zipasr SCALE=s",  # a target that does not exist
        "make zip-asr SCALES=s",  # a variable that does not exist
        'make zip-asr ARGS="train.learning_rate=1"',  # a key that does not exist
        "python -m zipper_pl zip experiments/s/nope.yaml",  # a file that does not exist
        "python -m zipper_pl speek x",  # a command that does not exist
    ],
)
def test_the_checks_catch_a_stale_command(bad):
    with pytest.raises(AssertionError):
        test_readme_command_names_real_targets_variables_commands_and_keys(bad)

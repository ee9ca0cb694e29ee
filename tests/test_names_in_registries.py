"""Task and modality names live in their registries (``TASKS`` in config/components.py,
``MODALITIES`` in data/modalities.py, the architectures in registry.py): code elsewhere asks a
registry entry (``TASKS[task].writes_text``, ``MODALITIES[m].budget``), it does not compare names,
so a new task or modality is an entry, not an edit in every module that branches on it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT
from zipper_pl.config.components import TASKS
from zipper_pl.data.modalities import MODALITIES

REGISTRIES = (
    "zipper_pl/config/components.py",
    "zipper_pl/data/modalities.py",
    "zipper_pl/registry.py",
)
# (file, the name compared): why the string there is not a branch on a task or modality
NOT_A_BRANCH = {
    ("zipper_pl/data/prepare.py", "text"): "the text-only pool (data.text_file replaces it)",
    ("zipper_pl/stages/chain.py", "speech"): "the speech-only pool has no transcripts",
    ("zipper_pl/fitting/ablation_cells.py", "text"): "ablation.freeze=text is the paper's Zipper",
    ("zipper_pl/results/retention.py", "text"): "text retention is the text tower's, by definition",
    (
        "zipper_pl/results/report.py",
        "asr",
    ): "results.json's systems hold their ASR scores under 'asr'",
    ("zipper_pl/results/report.py", "tts"): "... and their TTS scores under 'tts'",
}


def name_comparisons(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every ``x == "asr"``, ``m != "text"``, ``"tts" in s`` and the like."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for c in (e for o in operands for e in getattr(o, "elts", [o])):
                if isinstance(c, ast.Constant) and c.value in names:
                    found.append((node.lineno, c.value))
    return found


def test_nothing_outside_the_registries_compares_task_or_modality_names():
    names = set(TASKS) | set(MODALITIES)
    found, used = [], set()
    for path in sorted((ROOT / "zipper_pl").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where in REGISTRIES:
            continue
        for line, name in name_comparisons(path, names):
            if (where, name) in NOT_A_BRANCH:
                used.add((where, name))
            else:
                found.append(f"{where}:{line} compares {name!r}")
    assert not found, "ask the registry entry instead:\n  " + "\n  ".join(found)
    assert used == set(NOT_A_BRANCH), f"stale entries: {set(NOT_A_BRANCH) - used}"


def test_the_check_finds_a_branch(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('def f(task, m):\n    return task == "asr" or m in ("text", "video")\n')
    assert name_comparisons(probe, set(TASKS) | set(MODALITIES)) == [(2, "asr"), (2, "text")]

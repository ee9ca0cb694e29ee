"""How `make demo`'s two lanes pack its stages: a list-scheduling simulation of `make -j2` over
the stage walls of a finished demo, for the order the Makefile lists the evaluation's
prerequisites in and for every other order of the stages after the vocoder.

make starts the first ready prerequisite (a target's own prerequisites first) whenever a lane
is free; the TTS stages wait for the vocoder (order-only), the judge for the speech tower.

``python -m benchmarks.demo_lanes RUNS/demo-embedded/eval-...`` (a finished demo's evaluation
folder, which names the stages it read; each stage's ``fit_wall_s`` plus ``--startup`` seconds is
its time on a lane).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import yaml

NEEDS = {  # stage -> the stages it waits for (the Makefile's rules)
    "vocoder": [],
    "pretrain-text": [],
    "pretrain-speech": [],
    "zipper-asr": ["pretrain-text", "pretrain-speech"],
    "single-asr": ["pretrain-text", "pretrain-speech"],
    "zipper-tts": ["pretrain-text", "pretrain-speech", "vocoder"],
    "single-tts": ["pretrain-text", "pretrain-speech", "vocoder"],
    "judge": ["pretrain-speech"],
}
MAKEFILE_ORDER = ["vocoder", "zipper-asr", "zipper-tts", "single-asr", "judge", "single-tts"]
BEFORE = ["vocoder", "zipper-asr", "single-asr", "judge", "zipper-tts", "single-tts"]


def makespan(order: list[str], walls: dict[str, float], lanes: int = 2) -> float:
    """When the last stage ends, started as `make -j<lanes>` starts them in ``order``."""
    walk: list[str] = []

    def visit(stage: str) -> None:
        for need in NEEDS[stage]:
            visit(need)
        if stage not in walk:
            walk.append(stage)

    for stage in order:
        visit(stage)
    t, done, running = 0.0, set(), {}
    while len(done) < len(walk):
        for stage in walk:
            ready = all(n in done for n in NEEDS[stage])
            if len(running) < lanes and stage not in done | set(running) and ready:
                running[stage] = t + walls[stage]
        stage = min(running, key=running.get)
        t = running.pop(stage)
        done.add(stage)
    return t


def stage_walls(eval_folder: Path, startup: float) -> dict[str, float]:
    """Each stage's ``fit_wall_s`` plus ``startup``, for the stages an evaluation folder read."""
    inputs = yaml.safe_load((eval_folder / "config.yaml").read_text())["inputs"]
    results = json.loads((eval_folder / "results.json").read_text())
    folders = {"pretrain-text": inputs["text"], "pretrain-speech": inputs["speech"],
               "judge": inputs["judge"], "vocoder": inputs["vocoder"]}  # fmt: skip
    for system in results["systems"]:
        for task, folder in system["folders"].items():
            folders[f"{system['name']}-{task}"] = folder
    return {
        stage: json.loads((Path(folders[stage]) / "metrics.json").read_text())["fit_wall_s"]
        + startup
        for stage in NEEDS
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a finished demo's evaluation folder")
    ap.add_argument("--startup", type=float, default=10.0, help="seconds per stage beyond its fit")
    args = ap.parse_args()
    walls = stage_walls(args.folder, args.startup)
    print("lane time per stage:", {k: round(v) for k, v in walls.items()})
    print(f"Makefile order {MAKEFILE_ORDER}: {makespan(MAKEFILE_ORDER, walls):.0f} s")
    print(f"order before 2026-12-06 {BEFORE}: {makespan(BEFORE, walls):.0f} s")
    rest = MAKEFILE_ORDER[1:]
    best = min(itertools.permutations(rest), key=lambda p: makespan(["vocoder", *p], walls))
    print(f"best of {len(list(itertools.permutations(rest)))} orders after the vocoder "
          f"{list(best)}: {makespan(['vocoder', *best], walls):.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()

"""How `make demo`'s two lanes pack its stages: GNU make itself, `make -j2`, run on a stand-in
Makefile with the demo's dependencies whose recipes sleep for each stage's measured lane time
(scaled down), for the order the Makefile lists the evaluation's prerequisites in, the order
before, and every other order of the stages after the vocoder.

A list-scheduling model of make is not enough: a target whose order-only prerequisite (the TTS
stages' vocoder) was still running when make first visited it is started later than its place
in the list (an order that model ranked best, the Zipper TTS right after the Zipper ASR, made
make start it last, alone on one lane: that demo took 14 min 33 s).

``python -m benchmarks.demo_lanes RUNS/demo-embedded/eval-... [--scale 200] [--all]
[--set pretrain-text=120 ...]`` (a finished demo's evaluation folder, which names the stages it
read; each stage's ``fit_wall_s`` plus ``--startup`` seconds is its time on a lane; ``--set``
replaces a stage's fit by a figure to ask what a faster stage would buy).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

NEEDS = {  # stage -> (prerequisites, order-only prerequisites): the Makefile's rules
    "vocoder": ([], []),
    "pretrain-text": ([], []),
    "pretrain-speech": ([], []),
    "zipper-asr": (["pretrain-text", "pretrain-speech"], []),
    "single-asr": (["pretrain-text", "pretrain-speech"], []),
    "zipper-tts": (["pretrain-text", "pretrain-speech"], ["vocoder"]),
    "single-tts": (["pretrain-text", "pretrain-speech"], ["vocoder"]),
    "judge": (["pretrain-speech"], []),
}
MAKEFILE_ORDER = ["vocoder", "zipper-asr", "judge", "single-asr", "zipper-tts", "single-tts"]
BEFORE = ["vocoder", "zipper-asr", "single-asr", "judge", "zipper-tts", "single-tts"]


def makespan(
    order: list[str], walls: dict[str, float], lanes: int = 2, scale: float = 200
) -> float:
    """Seconds (unscaled) `make -j<lanes>` takes over ``order`` when each recipe sleeps
    ``walls[stage] / scale`` seconds."""
    rules = [f"all: {' '.join(order)}"]
    for stage, (needs, after) in NEEDS.items():
        deps = " ".join(needs) + (" | " + " ".join(after) if after else "")
        rules.append(f"{stage}: {deps}\n\t@sleep {walls[stage] / scale:.4f}; touch $@")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "Makefile").write_text("\n".join(rules) + "\n")
        start = time.perf_counter()
        subprocess.run(["make", "-s", f"-j{lanes}", "-C", folder], check=True)
        return (time.perf_counter() - start) * scale


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


def with_fits(walls: dict[str, float], fits: list[str], startup: float) -> dict[str, float]:
    """``walls`` with the lane time of each ``STAGE=SECONDS`` in ``fits`` replaced by that fit
    plus ``startup``: what a faster (or slower) stage would do to the demo's wall time."""
    out = dict(walls)
    for item in fits:
        stage, _, seconds = item.partition("=")
        if stage not in out or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"--set {item!r}: give STAGE=SECONDS, STAGE one of {sorted(out)}")
        out[stage] = float(seconds) + startup
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a finished demo's evaluation folder")
    ap.add_argument("--startup", type=float, default=10.0, help="seconds per stage beyond its fit")
    ap.add_argument("--scale", type=float, default=200.0, help="lane seconds per slept second")
    ap.add_argument("--all", action="store_true", help="also every order after the vocoder")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="STAGE=SECONDS",
        help="what if: a stage's fit took SECONDS instead (e.g. pretrain-text=120)",
    )
    args = ap.parse_args()
    walls = with_fits(stage_walls(args.folder, args.startup), args.set, args.startup)
    print("lane time per stage:", {k: round(v) for k, v in walls.items()})
    for name, order in (("Makefile order", MAKEFILE_ORDER), ("order before 2026-12-06", BEFORE)):
        print(f"{name} {order}: {makespan(order, walls, scale=args.scale):.0f} s")
    if args.all:
        spans = {p: makespan(["vocoder", *p], walls, scale=args.scale)
                 for p in itertools.permutations(MAKEFILE_ORDER[1:])}  # fmt: skip
        for p, span in sorted(spans.items(), key=lambda kv: kv[1])[:5]:
            print(f"  {['vocoder', *p]}: {span:.0f} s")


if __name__ == "__main__":
    main()

"""Bookkeeping at LibriLight's scale, simulated: how the data fingerprint, naming a chain's stages
(what every ``make`` call does first) and reading a manifest grow with the corpus.

``python -m benchmarks.bench_scale [--files 10000 100000 1000000] [--lines 1000000 7000000]
[--root DIR]`` writes ``bench_scale.json`` beside a markdown table on stdout. The tree is
``simulate_librilight``'s: empty ``.flac`` files under ``small/<speaker>/<book>/`` (the
fingerprint stats files, it never opens them); the manifest is JSONL records of that shape. Each
measurement runs in a fresh interpreter, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def simulate_librilight(
    root: Path, n_files: int, *, per_book: int = 100, books_per_speaker: int = 10
) -> Path:
    """``<root>/librilight/small/<speaker>/<book>/<segment>.flac`` (empty), ``n_files`` in all,
    as libri-light's ``cut_by_vad.py`` lays out its segments. Returns the corpus root."""
    split = root / "librilight" / "small"
    for i in range(n_files):
        book, seg = divmod(i, per_book)
        spk, book = divmod(book, books_per_speaker)
        folder = split / f"{spk:05d}" / f"book{book:03d}"
        if seg == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{spk:05d}_{book:03d}_{seg:04d}.flac").touch()
    return root


def simulate_manifest(path: Path, n_lines: int) -> Path:
    """A JSONL manifest of ``n_lines`` LibriLight-like records."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n_lines):
            spk, seg = divmod(i, 1000)
            row = {"id": f"small/{spk:05d}/{seg:05d}", "audio": f"small/{spk:05d}/{seg:05d}.flac",
                   "text": None, "duration": 12.5, "speaker": f"{spk:05d}"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return path


def _measure(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints JSON; add its peak RSS (MB)."""
    wrapped = (
        "import json, resource, time\nt0 = time.perf_counter()\n"
        f"{code}\n"
        "out['seconds'] = time.perf_counter() - t0\n"
        "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(out))"
    )
    r = subprocess.run([sys.executable, "-c", wrapped], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def fingerprint_cost(root: Path) -> dict:
    return _measure(
        "from zipper_pl.config import load_config\n"
        "from zipper_pl.data.corpora.sources import data_fingerprint\n"
        f"cfg = load_config('experiments/l/pretrain_speech.yaml', ['data.corpus=librilight', "
        f"'data.root={root}', 'data.train_splits=[small]', 'data.valid_splits=[]', "
        "'data.test_splits=[]'])\n"
        "out = {'digest': data_fingerprint(cfg.data)[:12]}"
    )


def paths_cost(root: Path) -> dict:
    """What ``make -n zip-asr`` computes: every stage folder of the chain (their identities)."""
    return _measure(
        "import contextlib, io\nfrom zipper_pl.__main__ import _chain_paths\n"
        f"args = ['experiments/l', 'data.corpus=librilight', 'data.root={root}', "
        "'data.train_splits=[small]', 'data.valid_splits=[]', 'data.test_splits=[]']\n"
        "out = {'stages': len(_chain_paths(args))}"
    )


def manifest_cost(path: Path) -> dict:
    return _measure(
        "from zipper_pl.data.corpora.manifest import read_manifest\n"
        f"m = read_manifest({str(path)!r})\n"
        "t1 = time.perf_counter()\n"
        "hours = sum(r.duration for r in m) / 3600  # every record made once, as tokenizing does\n"
        "out = {'records': len(m), 'read_s': t1 - t0, 'hours': hours}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale")
    ap.add_argument("--files", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--lines", type=int, nargs="*", default=[1_000_000, 7_000_000])
    ap.add_argument("--root", type=Path, default=Path("/tmp/zipper-scale"))
    ap.add_argument("--out", type=Path, default=Path("bench_scale.json"))
    args = ap.parse_args()
    rows: list[dict] = []
    for n in args.files:
        root = args.root / f"tree-{n}"
        t0 = time.perf_counter()
        if not root.exists():
            simulate_librilight(root, n)
        made = time.perf_counter() - t0
        first, again = fingerprint_cost(root), fingerprint_cost(root)
        paths = [paths_cost(root) for _ in range(2)]
        rows.append({"what": "tree", "files": n, "simulate_s": made, "fingerprint": first,
                     "fingerprint_again": again, "paths": paths})  # fmt: skip
    for n in args.lines:
        path = args.root / f"manifest-{n}.jsonl"
        if not path.exists():
            args.root.mkdir(parents=True, exist_ok=True)
            simulate_manifest(path, n)
        rows.append({"what": "manifest", "lines": n, "bytes": os.path.getsize(path),
                     "read": manifest_cost(path)})  # fmt: skip
    args.out.write_text(json.dumps(rows, indent=1))
    print("| corpus | fingerprint (s) | again (s) | peak RSS (MB) | naming the chain, twice (s) |")
    print("|---|---:|---:|---:|---|")
    for r in (r for r in rows if r["what"] == "tree"):
        p = " / ".join(f"{x['seconds']:.1f}" for x in r["paths"])
        print(f"| {r['files']:,} files | {r['fingerprint']['seconds']:.2f} | "
              f"{r['fingerprint_again']['seconds']:.2f} | "
              f"{r['fingerprint']['peak_rss_mb']:.0f} | {p} |")  # fmt: skip
    print("\n| manifest | MB | read (s) | peak RSS (MB) |\n|---|---:|---:|---:|")
    for r in (r for r in rows if r["what"] == "manifest"):
        print(f"| {r['lines']:,} lines | {r['bytes'] / 1e6:.0f} | {r['read']['seconds']:.1f} | "
              f"{r['read']['peak_rss_mb']:.0f} |")  # fmt: skip
    if os.environ.get("ZIPPER_SCALE_KEEP") != "1":
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()

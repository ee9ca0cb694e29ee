"""The listing fingerprint of corpus trees: GNU find's listing (several processes) must give the
digest the Python walk gives, on names that are easy to get wrong, and follow every change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from zipper_pl.data.corpora import sources


def walk_digest(folder: Path) -> str:
    """The fingerprint as it was computed before find (2026-12-04): one Python stat per file."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            entries.append(f"{os.path.relpath(p, folder)}\0{st.st_size}\0{st.st_mtime_ns}")
    h = hashlib.sha256()
    for e in sorted(entries):
        h.update(e.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def odd_tree(root: Path) -> Path:
    for rel, data in [("19/198/19-198-0000.flac", b"x" * 10), ("19/198/19-198.trans.txt", b"t"),
                      ("sp ace/new\nline.flac", b"yy"), ("-name/ü.flac", b"z"), ("top.txt", b""),
                      ("84/(paren)/a b.flac", b"abc")]:  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "link.flac").symlink_to(root / "19/198/19-198-0000.flac")  # listed, as its target
    (root / "linkdir").symlink_to(root / "19")  # neither listed nor entered
    os.mkfifo(root / "84/fifo")
    os.utime(root / "84/(paren)/a b.flac", ns=(1, 1_700_000_000_123_456_789))
    return root


def test_find_lists_what_the_walk_lists_and_follows_every_change(tmp_path, monkeypatch, capsys):
    root = odd_tree(tmp_path / "tree")
    assert sources._listing_by_find(root) is not None  # GNU find on this machine: it is used
    before = sources.tree_digest(root)
    assert before == walk_digest(root)
    monkeypatch.setattr(sources, "_find", lambda folder, starts: None)  # no GNU find: the walk
    assert sources.tree_digest(root) == before
    assert "no GNU find (or it failed): listing every file from Python" in capsys.readouterr().out
    monkeypatch.undo()
    trans = root / "19/198/19-198.trans.txt"
    trans.write_bytes(b"u")  # a transcript edited in place: same size, new mtime
    os.utime(trans, ns=(1, trans.stat().st_mtime_ns + 1))
    assert sources.tree_digest(root) == walk_digest(root) != before


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_the_listing_does_not_depend_on_how_many_finds_share_it(tmp_path, monkeypatch, processes):
    root = odd_tree(tmp_path / "tree")
    monkeypatch.setattr(sources, "_FIND_PROCESSES", processes)
    assert sources.tree_digest(root) == walk_digest(root)

"""The listening page: wav clips written right, the page escaped and offline, and (where Chromium
is installed) every ``<audio>`` loading from disk in a real headless browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from zipper_pl.errors import UserError
from zipper_pl.results.listen import ListenRow, write_listen_page, write_wav

SR = 16_000
COLUMNS = ["gold", "zipper", "griffin-lim"]


def tone(freq: float, seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 0.3 * np.sin(2 * np.pi * freq * t)


def test_write_wav_is_16_bit_pcm_at_the_given_rate(tmp_path: Path):
    path = tmp_path / "a" / "clip.wav"
    write_wav(path, tone(440.0, 0.5, 22_050), 22_050)
    info = sf.info(str(path))
    assert (info.samplerate, info.subtype, info.channels) == (22_050, "PCM_16", 1)
    assert info.frames == 11_025
    assert not [p for p in path.parent.iterdir() if p.name != "clip.wav"]  # no temp leftovers


def test_write_wav_clips_and_refuses_nan(tmp_path: Path):
    path = tmp_path / "loud.wav"
    write_wav(path, np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 7.0]), SR)
    back, sr = sf.read(str(path))
    assert sr == SR
    np.testing.assert_allclose(back, [-1.0, -1.0, 0.0, 0.5, 1.0, 1.0], atol=1e-4)
    for bad in (np.nan, np.inf):
        with pytest.raises(UserError, match="NaN / inf"):
            write_wav(tmp_path / "bad.wav", np.array([0.0, bad, 0.1]), SR)
    assert not (tmp_path / "bad.wav").exists()


def make_page(out: Path, rows: int = 2) -> tuple[Path, list[ListenRow]]:
    """``rows`` sentences x ``COLUMNS`` of 0.5 s tones under ``out/audio``, and their page."""
    listen_rows = []
    for i in range(rows):
        clips = {}
        for j, col in enumerate(COLUMNS):
            rel = f"audio/{col}/utt {i}.wav"  # a space: the src must be URL-quoted
            write_wav(out / rel, tone(220.0 * (1 + i + j)), SR)
            clips[col] = rel
        wers = {"gold": 0.0, "zipper": 0.25 * (i + 1), "griffin-lim": None}
        listen_rows.append(ListenRow(f"utt{i}", f"sentence number {i}", clips, wers))
    page = write_listen_page(out, listen_rows, COLUMNS, title="tones", notes=["recogniser: none"])
    return page, listen_rows


def test_page_shows_every_text_column_and_clip_escaped(tmp_path: Path):
    u1_clips = {"gold": "audio/gold/u1.wav"}
    u2_clips = {"gold": "audio/gold/u 2.wav", "zipper": "audio/zipper/u2.wav"}
    rows = [
        ListenRow(
            "u1",
            'a <b>bold</b> & "quoted" text',
            u1_clips,
            {"gold": 0.0, "zipper": 0.123},
            hyps={"zipper": "a <i>bold"},
        ),
        ListenRow("u2", "plain", u2_clips, {"gold": None, "zipper": 1.5}),
    ]
    page = write_listen_page(tmp_path, rows, ["zipper", "gold"], title="T <x>", notes=["n & m"])
    assert page == tmp_path / "listen.html"
    text = page.read_text()
    assert html.escape('a <b>bold</b> & "quoted" text') in text
    assert "<b>bold</b>" not in text and "<i>bold" not in text
    assert "a &lt;i&gt;bold" in text and "T &lt;x&gt;" in text and "n &amp; m" in text
    assert "plain" in text
    heads = re.findall(r"<th>(.*?)</th>", text)
    assert heads == ["id", "text", "zipper", "gold"]  # columns in the given order
    audios = re.findall(r"<audio [^>]*>", text)
    assert len(audios) == 3
    found = {
        (re.search(r'data-id="(.*?)"', a)[1], re.search(r'data-column="(.*?)"', a)[1]): re.search(
            r'src="(.*?)"', a
        )[1]
        for a in audios
    }
    assert found == {
        ("u1", "gold"): "audio/gold/u1.wav",
        ("u2", "gold"): "audio/gold/u%202.wav",
        ("u2", "zipper"): "audio/zipper/u2.wav",
    }
    assert all('controls preload="metadata"' in a for a in audios)
    assert text.count("no audio") == 1  # u1 has no zipper clip
    assert "12.3 %" in text and "150.0 %" in text and "0.0 %" in text and "–" in text


def test_page_needs_no_network(tmp_path: Path):
    page, _ = make_page(tmp_path)
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "<script" not in text and "@import" not in text


# --- a real browser -----------------------------------------------------------------------------

PROBE = """<script>
window.addEventListener("load", () => {
  const audios = [...document.querySelectorAll("audio")];
  const t0 = Date.now();
  const done = () => {
    const pre = document.createElement("pre");
    pre.id = "result";
    pre.textContent = JSON.stringify(audios.map(a => ({
      id: a.dataset.id, column: a.dataset.column, ready: a.readyState,
      duration: a.readyState >= 1 ? a.duration : null, error: a.error ? a.error.code : null})));
    document.body.appendChild(pre);
  };
  const poll = () => {
    if (audios.every(a => a.readyState >= 1 || a.error) || Date.now() - t0 > 8000) done();
    else setTimeout(poll, 50);
  };
  poll();
});
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed: apt install chromium to run the listening-page check")
    return exe


def run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium (``--headless=new``, else plain ``--headless`` for an older one)."""
    common = [
        "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--mute-audio",
        "--autoplay-policy=no-user-gesture-required", "--no-first-run", "--disable-extensions",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=10000",
    ]  # fmt: skip
    env = {"HOME": str(tmp), "PATH": "/usr/bin:/bin"}
    for headless in ("--headless=new", "--headless"):
        proc = subprocess.run([exe, headless, *common, *args], capture_output=True, text=True,
                              timeout=60, env=env)  # fmt: skip
        if proc.returncode == 0 and (proc.stdout.strip() or "--dump-dom" not in args):
            return proc
    raise AssertionError(f"chromium failed (rc {proc.returncode}): {proc.stderr[-2000:]}")


def test_every_clip_loads_in_headless_chromium(tmp_path: Path):
    exe = chromium()
    out = tmp_path / "eval"
    page, rows = make_page(out)
    probe = out / "listen-probe.html"  # a copy next to the page: the same relative clip paths
    probe.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))

    start = time.monotonic()
    dom = run_chromium(exe, tmp_path, "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert found, f"no result in the dumped DOM:\n{dom[-2000:]}"
    results = json.loads(html.unescape(found[1]))
    assert len(results) == sum(len(r.clips) for r in rows) == 6
    assert {(r["id"], r["column"]) for r in results} == {(r.id, c) for r in rows for c in r.clips}
    for r in results:
        assert r["error"] is None, r
        assert r["duration"] is not None and r["duration"] > 0, r
        assert abs(r["duration"] - 0.5) < 0.02, r

    shot = tmp_path / "listen.png"
    run_chromium(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,800", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 0
    print(f"\nchromium check {time.monotonic() - start:.1f} s; screenshot: {shot}")

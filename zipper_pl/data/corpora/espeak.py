"""Offline text-to-speech with espeak-ng, driven through ctypes.

The ``espeakng-loader`` wheel ships ``libespeak-ng`` and its voice data, so no system package is
needed. Output is 16-bit mono PCM at 22,050 Hz.

Why a helper process: libespeak-ng keeps synthesis state in C statics (glottal phase, flutter
index) that survive between utterances and cannot be reset through its API, so the same text
spoken twice in one process gives different samples; and breathy variants (f2, f3, f5, ...) mix in
noise from a generator seeded by the clock at start-up. A small helper process (plain Python +
ctypes, no numpy or torch) initialises the library once and then forks a fresh child per
utterance, which reseeds that generator: every utterance starts from the same pristine state, so
the same text and speaker always give identical samples, whatever was spoken before, in whichever
process, at whatever time.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading

import numpy as np

from zipper_pl.errors import UserError

SAMPLE_RATE = 22_050

# The helper process. Constants from espeak-ng's speak_lib.h: AUDIO_OUTPUT_SYNCHRONOUS = 2,
# POS_CHARACTER = 1, espeakCHARS_UTF8 = 1, espeakRATE = 1, espeakVOLUME = 2, espeakPITCH = 3.
# Protocol over stdin/stdout, little-endian: request = u32 length + JSON {voice, rate, pitch, text};
# reply = i32 n (n >= 0: n bytes of int16 samples follow; -1 synthesis failed; -2 unknown voice).
_HELPER = r"""
import ctypes, json, os, struct, sys
lib = ctypes.CDLL(sys.argv[1])
lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write(struct.pack("<i", lib.espeak_Initialize(2, 0, sys.argv[2].encode(), 0)))
out.flush()
chunks = []
def collect(wav, n, events):
    if wav and n > 0:
        chunks.append(ctypes.string_at(wav, 2 * n))
    return 0
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                            ctypes.c_void_p)(collect)
lib.espeak_SetSynthCallback(CALLBACK)
def speak(req):
    lib.espeak_ng_SetRandSeed(0)  # breathy variants add noise from a generator seeded by the clock
    if lib.espeak_SetVoiceByName(req["voice"].encode()) != 0:
        return struct.pack("<i", -2)
    for param, value in ((1, req["rate"]), (3, req["pitch"]), (2, 100)):
        lib.espeak_SetParameter(param, value, 0)
    text = req["text"].encode()
    if lib.espeak_Synth(text, len(text) + 1, 0, 1, 0, 1, None, None) != 0:
        return struct.pack("<i", -1)
    data = b"".join(chunks)
    return struct.pack("<i", len(data)) + data
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    req = json.loads(inp.read(struct.unpack("<I", head)[0]))
    if not hasattr(os, "fork"):  # no fork (Windows): correct audio, history-dependent samples
        out.write(speak(req))
        out.flush()
        continue
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            reply = memoryview(speak(req))
            while reply:
                reply = reply[os.write(w, reply):]
        finally:
            os._exit(0)
    os.close(w)
    parts = []
    while True:
        part = os.read(r, 1 << 20)
        if not part:
            break
        parts.append(part)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    reply = b"".join(parts)
    if status != 0 or len(reply) < 4:
        reply = struct.pack("<i", -1)
    out.write(reply)
    out.flush()
"""


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One synthetic voice: an espeak-ng voice name (language + optional variant) with prosody."""

    voice: str = "en-us+f3"
    rate: int = 175  # words per minute (espeak accepts 80..450)
    pitch: int = 50  # base pitch, 0..100

    def __post_init__(self) -> None:
        if not 80 <= self.rate <= 450:
            raise UserError(f"speaker rate {self.rate} is outside 80..450 words per minute")
        if not 0 <= self.pitch <= 100:
            raise UserError(f"speaker pitch {self.pitch} is outside 0..100")

    @property
    def name(self) -> str:
        """A stable identifier usable in file names and manifests (e.g. ``en-us+f3_r175_p50``)."""
        return f"{self.voice}_r{self.rate}_p{self.pitch}"


def library_paths() -> tuple[str, str]:
    try:
        import espeakng_loader

        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except (ImportError, RuntimeError) as e:
        raise UserError(
            f"cannot find espeak-ng ({e}); install the 'espeakng-loader' wheel into this "
            "environment (pip install espeakng-loader) or use a real corpus instead"
        ) from e


class Synthesizer:
    """One helper process. Calls are serialised by a lock: use one per thread for parallelism."""

    def __init__(self) -> None:
        lib_path, data_path = library_paths()
        self.pid = os.getpid()
        self.lock = threading.Lock()
        # A file, not a pipe, so it can never fill up and block; it lives as long as the helper.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER, lib_path, data_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        head = self.proc.stdout.read(4)
        rate = struct.unpack("<i", head)[0] if len(head) == 4 else None
        if rate != SAMPLE_RATE:
            self.close()
            self.stderr.seek(0)
            err = self.stderr.read().decode(errors="replace").strip()[-500:]
            raise UserError(
                f"espeak-ng failed to start (sample rate {rate}, expected {SAMPLE_RATE}; {err}); "
                f"reinstall the 'espeakng-loader' wheel (library {lib_path})"
            )

    def close(self) -> None:
        if os.getpid() != self.pid:  # a forked child inherited this object: the helper isn't ours
            return
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the helper leaves its loop at end of input
            self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.stderr.close()

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, text: str, speaker: Speaker) -> np.ndarray:
        """Speak ``text``: int16 mono samples at :data:`SAMPLE_RATE` Hz (empty for blank text)."""
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        req = json.dumps(dataclasses.asdict(speaker) | {"text": text}).encode()
        with self.lock:
            try:
                self.proc.stdin.write(struct.pack("<I", len(req)) + req)
                self.proc.stdin.flush()
                head = self.proc.stdout.read(4)
                n = struct.unpack("<i", head)[0]
                data = self.proc.stdout.read(n) if n > 0 else b""
            except (BrokenPipeError, struct.error) as e:
                raise RuntimeError(
                    f"the espeak-ng helper process died (exit {self.proc.poll()})"
                ) from e
        if n == -2:
            raise UserError(
                f"espeak-ng has no voice {speaker.voice!r}; use a voice name with an optional "
                "variant such as 'en-us', 'en+m3', 'en-us+f3' or 'en-gb-x-rp+f2'"
            )
        if n < 0 or len(data) != n:
            raise RuntimeError(f"espeak-ng failed to synthesise {text!r} with {speaker.name}")
        return np.frombuffer(data, dtype="<i2").astype(np.int16)


_engine: Synthesizer | None = None
_engine_lock = threading.Lock()


def _get_engine() -> Synthesizer:
    global _engine
    with _engine_lock:
        # A forked process (DataLoader or multiprocessing worker) must not share its parent's pipes.
        if _engine is None or _engine.pid != os.getpid():
            _engine = Synthesizer()
            atexit.register(_engine.close)
        return _engine


def synthesize(text: str, speaker: Speaker) -> np.ndarray:
    """Speak ``text``: int16 mono samples at :data:`SAMPLE_RATE` Hz (empty for blank text).

    Deterministic: the same text and speaker give identical samples in any process, any order.
    """
    return _get_engine()(text, speaker)

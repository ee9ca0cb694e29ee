"""Phonemes: a modality every corpus with transcripts has offline. espeak-ng (which the embedded
corpus already speaks with) translates a transcript into IPA phonemes; a word-level
``tokenizers`` model maps each phoneme to an id.

A phoneme sequence is the phonemes of each word separated by ``|`` (word boundary), stress marks
kept on their vowel (``ˈoʊ`` and ``oʊ`` are two symbols): ``hello world`` ->
``h ə l ˈoʊ | w ˈɜː l d``. Symbols the tokenizer has not seen become ``<unk>``, counted and shown.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.trainers import WordLevelTrainer

from zipper_pl.data.corpora.espeak import library_paths
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_text

PHONEME_TOKENIZER_FILE = "phoneme_tokenizer.json"
WORD_BOUNDARY = "|"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3, fixed like the text tokenizer's
_IPA, _TEXT_UTF8 = 0x02, 1  # espeak-ng speak_lib.h: espeakPHONEMES_IPA, espeakCHARS_UTF8
_SEPARATOR = ord("_")  # phonememode bits 8..23: the character espeak puts between phonemes


class _Phonemizer:
    """libespeak-ng's text-to-phoneme translation, in this process. Unlike synthesis (a helper
    process, see ``espeak.py``), translation keeps no state between calls that changes its
    output; calls are serialised because the library is not thread-safe."""

    def __init__(self) -> None:
        lib_path, data_path = library_paths()
        self.lib = ctypes.CDLL(lib_path)
        c_int = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [c_int, c_int, ctypes.c_char_p, c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), c_int, c_int]
        if self.lib.espeak_Initialize(2, 0, data_path.encode(), 0) <= 0:  # 2 = synchronous
            raise UserError(f"espeak-ng failed to start (library {lib_path}): reinstall "
                            "the 'espeakng-loader' wheel")  # fmt: skip
        self.voice = ""
        self.lock = threading.Lock()

    def __call__(self, text: str, voice: str) -> list[str]:
        with self.lock:
            if voice != self.voice:
                if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise UserError(
                        f"espeak-ng has no voice {voice!r} (phonemes.voice): use a language "
                        "such as 'en-us', 'en-gb', 'de' or 'fr'"
                    )
                self.voice = voice
            buf = ctypes.create_string_buffer(text.encode())
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            clauses = []
            while ptr.value:  # one clause per call; the library advances the pointer
                out = self.lib.espeak_TextToPhonemes(
                    ctypes.byref(ptr), _TEXT_UTF8, _IPA | (_SEPARATOR << 8)
                )
                clauses.append((out or b"").decode())
        symbols: list[str] = []
        for w in (w for c in clauses for w in c.split()):
            symbols += [WORD_BOUNDARY] if symbols else []
            symbols += [s for s in w.split(chr(_SEPARATOR)) if s]
        return symbols


_phonemizer: _Phonemizer | None = None


def phoneme_rules(voice: str) -> str:
    """What turns a text into phonemes, for cache keys: the language and the espeak-ng build
    (its rules change between releases, so caches made by another build are not reused)."""
    return f"{voice}@espeakng-loader-{metadata.version('espeakng-loader')}"


def phonemize(texts: Sequence[str], voice: str = "en-us") -> list[list[str]]:
    """Each text as its IPA phoneme symbols, words separated by ``|``."""
    global _phonemizer
    if _phonemizer is None:
        _phonemizer = _Phonemizer()
    return [_phonemizer(t, voice) for t in texts]


class PhonemeTokenizer:
    """Phoneme symbols <-> ids (a ``tokenizers`` WordLevel model over space-separated symbols:
    its JSON file loads with ``transformers.PreTrainedTokenizerFast`` too)."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, path: str | Path, voice: str = "en-us") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(
                f"phoneme tokenizer {str(self.path)!r} not found: run `make pretrain-phonemes`"
            )
        try:
            self.tok = Tokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises plain Exception on a corrupt file
            raise UserError(
                f"phoneme tokenizer {str(self.path)!r} is unreadable ({e}): delete the folder "
                f"{str(self.path.parent)!r} and re-run the stage that made it"
            ) from None
        self.voice = voice
        self.rules = phoneme_rules(voice)  # keys the token caches made with this tokenizer
        self.unknown = 0  # symbols encoded as <unk> so far (shown by whoever encodes a pool)

    @classmethod
    def train(cls, texts: Sequence[str], out_path: str | Path, voice: str) -> PhonemeTokenizer:
        """Fit the symbol table on the phonemes of ``texts`` (ids in order of frequency)."""
        seqs = [" ".join(p) for p in phonemize(texts, voice)]
        if not any(seqs):
            raise UserError("no phonemes to train the phoneme tokenizer on (check data.corpus)")
        tok = Tokenizer(WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = WhitespaceSplit()
        tok.train_from_iterator(seqs, WordLevelTrainer(special_tokens=list(SPECIALS)))
        atomic_write_text(Path(out_path), tok.to_str())
        return cls(out_path, voice)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        seqs = [" ".join(p) for p in phonemize(texts, self.voice)]
        ids = [np.asarray(e.ids, dtype=np.int32) for e in self.tok.encode_batch(seqs)]
        self.unknown += sum(int((x == self.unk_id).sum()) for x in ids)
        return ids

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Phonemes, words separated by spaces (special ids dropped)."""
        words = " ".join(self.tok.id_to_token(int(i)) for i in ids if int(i) > self.unk_id)
        return words.replace(" ", "").replace(WORD_BOUNDARY, " ")

    def copy_to(self, folder: Path) -> Path:
        dst = Path(folder) / PHONEME_TOKENIZER_FILE
        if dst.resolve() != self.path.resolve():
            atomic_write_text(dst, self.path.read_text())
        return dst

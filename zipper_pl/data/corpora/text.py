"""Text side: plain-text corpus reader and the SentencePiece tokenizer saved with each stage."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import sentencepiece as spm

from zipper_pl.data.corpora.readers import summary_line
from zipper_pl.data.corpora.textnorm import normalize_text
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_bytes

TOKENIZER_FILE = "text_tokenizer.model"


def read_text_file(path: str | Path, counts: Counter[str] | None = None) -> list[str]:
    """One utterance per line (e.g. the LibriSpeech LM corpus), normalised; blank lines dropped.

    Dropped lines and removed characters are added to ``counts`` by reason and shown in one
    console line, so nothing is lost silently.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"text corpus {str(p)!r} not found (set data.text_file)")
    counts = Counter() if counts is None else counts
    lines = []
    with p.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            norm = normalize_text(line, counts)
            if norm:
                lines.append(norm)
            else:
                counts["empty_line" if line.strip() else "blank_line"] += 1
    print(summary_line(f"text {p.name}", len(lines), counts))
    if not lines:
        raise UserError(f"text corpus {str(p)!r} has no usable lines (set data.text_file)")
    return lines


class TextTokenizer:
    """SentencePiece with fixed special ids: unk 0, bos 1, eos 2, pad 3."""

    unk_id, bos_id, eos_id, pad_id = 0, 1, 2, 3

    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise UserError(
                f"text tokenizer {str(self.path)!r} not found: run `make pretrain-text` first"
            )
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:  # truncated or not a SentencePiece model
            raise UserError(
                f"text tokenizer {str(self.path)!r} is unreadable ({e}): delete the folder "
                f"{str(self.path.parent)!r} and re-run the stage that made it"
            ) from None

    @classmethod
    def train(
        cls,
        sentences: list[str],
        out_path: str | Path,
        vocab_size: int,
        model_type: str = "unigram",
        max_sentences: int = 200_000,
    ) -> TextTokenizer:
        """Fit SentencePiece on ``sentences`` (deterministic: fixed order, one thread)."""
        if not sentences:
            raise UserError("no text to train the text tokenizer on (check data.corpus)")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences[:max_sentences]),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            unk_id=cls.unk_id,
            bos_id=cls.bos_id,
            eos_id=cls.eos_id,
            pad_id=cls.pad_id,
            character_coverage=1.0,
            # small corpora cannot fill a large vocabulary: take what the text supports
            hard_vocab_limit=False,
            num_threads=1,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
        atomic_write_bytes(Path(out_path), model.getvalue())
        return cls(out_path)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.sp.encode(texts)
        return [np.asarray(x, dtype=np.int32) for x in ids]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        keep = [int(i) for i in ids if int(i) > self.pad_id]
        return self.sp.decode(keep)

    def copy_to(self, folder: Path) -> Path:
        dst = Path(folder) / TOKENIZER_FILE
        if dst.resolve() != self.path.resolve():
            atomic_write_bytes(dst, self.path.read_bytes())
        return dst

"""The text tokenizer of a Hugging Face tower (``TEXT_TOWER=hf:...``), with the interface of our
SentencePiece ``TextTokenizer``, and the one function that loads whichever a folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zipper_pl.data.corpora.text import TOKENIZER_FILE, TextTokenizer
from zipper_pl.errors import UserError
from zipper_pl.hub import CONFIG_JSON, copy_side_files, is_hf_folder

# where a zipped stage keeps the config and tokenizer files of a tower imported from HF
HF_TEXT_DIR = "hf_text"


class HFTextTokenizer:
    """``transformers.AutoTokenizer`` from a local folder. Ids are the model's own; a sequence
    is wrapped in the model's bos/eos (eos when it has no bos, as Qwen2), pad = pad or eos."""

    def __init__(self, folder: str | Path) -> None:
        # imported here: transformers adds seconds to every start, only HF towers need it
        from transformers import AutoTokenizer

        self.path = Path(folder)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(
                f"cannot load the tokenizer in {str(self.path)!r} ({str(e).splitlines()[0]}): "
                "the folder needs tokenizer.json / tokenizer_config.json next to config.json"
            ) from None
        if self.tok.eos_token_id is None:
            raise UserError(f"the tokenizer in {str(self.path)!r} has no eos token")
        self.eos_id = int(self.tok.eos_token_id)
        self.bos_id = int(
            self.tok.bos_token_id if self.tok.bos_token_id is not None else self.eos_id
        )
        self.pad_id = int(
            self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id
        )
        missing = [n for n in ("bos", "pad") if getattr(self.tok, f"{n}_token_id") is None]
        if missing:  # shown, not silent: Qwen2 has no bos, many LMs no pad
            print(f"[hf] {self.path.name}: no {' / '.join(missing)} token: eos stands in")
        # the model's embedding may be larger than the tokenizer (padded to a multiple)
        model_vocab = json.loads((self.path / CONFIG_JSON).read_text()).get("vocab_size", 0)
        if len(self.tok) > model_vocab:
            raise UserError(
                f"the tokenizer in {str(self.path)!r} has {len(self.tok)} ids but the model only "
                f"{model_vocab}: tokenizer and weights come from different models"
            )
        self._vocab = int(model_vocab)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(x, dtype=np.int32) for x in ids]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def copy_to(self, folder: Path) -> Path:
        """Keep the config and tokenizer files (not the weights) with a stage."""
        dst = Path(folder) / HF_TEXT_DIR
        if dst.resolve() != self.path.resolve():
            copy_side_files(self.path, dst)
        return dst


def load_text_tokenizer(folder: str | Path) -> TextTokenizer | HFTextTokenizer:
    """The text tokenizer a stage folder or an HF model folder holds."""
    folder = Path(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        if is_hf_folder(folder / HF_TEXT_DIR):
            return HFTextTokenizer(folder / HF_TEXT_DIR)
        if is_hf_folder(folder):
            return HFTextTokenizer(folder)
    return TextTokenizer(folder / TOKENIZER_FILE)  # its own message when missing

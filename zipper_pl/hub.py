"""Hugging Face models from the hub cache or a local folder, and their content fingerprints.

One place for what every Hugging Face model we read needs (text towers ``TEXT_TOWER=hf:...``,
speech encoders ``audio.ssl_model``): ``hf:<id or folder>`` (the prefix is optional) names a
model; a hub id is fetched into, or found in, the hub cache by ``huggingface_hub.snapshot_download``
(which answers from the cache when offline), configs, tokenizers and safetensors only. Weights are
read from safetensors only: a pickle can run code when it is loaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from huggingface_hub import snapshot_download

from zipper_pl.errors import UserError
from zipper_pl.io import file_digest, json_digest

HF_PREFIX = "hf:"
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]  # never a pickle
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONFIG_JSON = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")
# files of an HF model folder that are not weights: kept with a zipped stage for the export
HF_SIDE_FILES = (
    *("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"),
    *("special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt"),
    *("added_tokens.json", "chat_template.jinja", "preprocessor_config.json"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, per process


def first_line(e: BaseException) -> str:
    """``Type: first sentence`` of an exception, so a UserError built on it stays one line."""
    lines = str(e).strip().splitlines()
    first = re.split(r"(?<=\.)\s", lines[0])[0][:200] if lines else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def folder_hint(key: str) -> str:
    return f"{key}=<folder with config.json and model.safetensors>"


def hub_folder(spec: str, key: str) -> Path:
    """A local folder for ``hf:<hub id or folder>``; one line naming ``key`` when unavailable."""
    name = spec.removeprefix(HF_PREFIX)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(name):
        raise UserError(f"{key}={spec} is no folder and no hub id: set {folder_hint(key)}")
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as e:  # the hub raises many types (offline, 401, 404, no connection)
        raise UserError(
            f"cannot get {name} from the Hugging Face hub ({first_line(e)}): offline or not "
            f"downloaded? set {folder_hint(key)}"
        ) from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of an HF model folder (sharded or not); a pickle is refused."""
    if (folder / SAFETENSORS_INDEX).is_file():
        index = json.loads((folder / SAFETENSORS_INDEX).read_text())
        return sorted({folder / f for f in index["weight_map"].values()})
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        return weights
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLES)
    if pickles:
        raise UserError(
            f"{folder} holds its weights only as {pickles[0]}, a pickle (loading one can run "
            "code, so zipper_pl reads safetensors only): convert it once where you trust the "
            "file: <transformers Auto class>.from_pretrained(folder).save_pretrained(out) "
            "writes model.safetensors; copy the tokenizer / preprocessor files along"
        )
    raise UserError(f"no *.safetensors in {folder}: not a Hugging Face model folder")


def content_digest(path: Path) -> str:
    """sha256 of a file, once per process; in the hub cache the blob a snapshot file links to
    is named by its sha256 (LFS files), so multi-GB weights are not read on every start."""
    blob = path.resolve()
    if path.is_symlink() and blob.parent.name == "blobs" and len(blob.name) == 64:
        return blob.name
    st = blob.stat()
    key = (str(blob), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(blob)
    return _DIGESTS[key]


def folder_fingerprint(folder: Path) -> str:
    """What a model in an HF folder is computed from: its weights, config, tokenizer and
    preprocessor files, by content (a copied folder has the same fingerprint)."""
    side = [folder / n for n in HF_SIDE_FILES if (folder / n).is_file()]
    files = sorted(weight_files(folder) + side)
    return "hf:" + json_digest({p.name: content_digest(p) for p in files})


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy an HF folder's config and tokenizer files (not its weights) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in HF_SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def is_hf_folder(folder: Path) -> bool:
    """An HF language model folder (config.json + tokenizer files), not one of our stages."""
    return (folder / CONFIG_JSON).is_file() and any(
        (folder / m).is_file() for m in TOKENIZER_MARKERS
    )

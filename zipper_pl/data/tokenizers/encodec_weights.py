"""Where the pretrained 24 kHz EnCodec weights come from, and how they are checked.

From ``audio.encodec_weights_dir`` or the torch hub cache (downloaded there on first use, where
there is a network). The file must carry the published sha256 prefix and is read by our code with
``torch.load(weights_only=True)``: the encodec package's own loader unpickles it in full, so a
file planted in a shared cache would run code.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from zipper_pl.config.components import ENCODEC_CHECKPOINT
from zipper_pl.errors import UserError

ENCODEC_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + ENCODEC_CHECKPOINT
ENCODEC_SHA256_PREFIX = "d7cc33bc"  # the hash in the file name, as encodec and torch.hub check it


def _encodec_checkpoint(weights_dir: str) -> Path:
    """The checkpoint file: in ``weights_dir``, else in the torch hub cache (downloaded there on
    first use, hash-checked)."""
    if weights_dir:
        path = Path(weights_dir).expanduser() / ENCODEC_CHECKPOINT
        if not path.is_file():
            raise UserError(
                f"{path} not found: put the EnCodec checkpoint there or fix "
                "audio.encodec_weights_dir"
            )
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / ENCODEC_CHECKPOINT
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(ENCODEC_URL, str(path), ENCODEC_SHA256_PREFIX)
        except Exception as e:  # no network, proxy, hash mismatch: the same advice in every case
            raise UserError(
                f"cannot load the EnCodec weights ({type(e).__name__}: {e}); they are not in the "
                f"torch hub cache ({path}) and could not be downloaded. Download "
                f"{ENCODEC_CHECKPOINT} and set audio.encodec_weights_dir to its folder, or use "
                "audio.codec=units (no weights needed)"
            ) from None
    return path


def pretrained_encodec(weights_dir: str) -> torch.nn.Module:
    """The pretrained 24 kHz model. Its weights are read by us with ``weights_only=True`` (the
    encodec package unpickles them in full: a planted file in a shared cache would run code)."""
    from encodec import EncodecModel

    path = _encodec_checkpoint(weights_dir)
    fix = "delete it (it is downloaded again) or fix audio.encodec_weights_dir"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(ENCODEC_SHA256_PREFIX):
        raise UserError(
            f"{path} is not the published EnCodec checkpoint (sha256 {digest[:8]}): {fix}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign, or a pickle that is more than weights
        raise UserError(f"{path} does not load as weights ({type(e).__name__}): {fix}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm deprecation inside encodec
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    model.name = "encodec_24khz"
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise UserError(
            f"{path} holds other weights than the 24 kHz EnCodec ({e}): {fix}"
        ) from None
    return model.eval()

"""Atomic file writes and safetensors weights: nothing half-written is ever mistaken for done.

Imports torch only when weights are saved or loaded: the config layer writes ``config.yaml``
through ``atomic_write_text`` without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from zipper_pl.errors import UserError

if TYPE_CHECKING:
    import torch

TMP_MARK = ".tmp-"  # in every temp file name: leftovers of a killed write are recognisable
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a write or fsync names no file: the message must name ours
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN / inf: a non-finite number is written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Valid JSON (non-finite numbers as null; numpy / torch scalars as floats), atomically."""
    text = json.dumps(
        _finite_or_none(json.loads(json.dumps(obj, default=float))),
        indent=2,
        sort_keys=True,
        allow_nan=False,
    )
    atomic_write_text(path, text + "\n")


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Export weights as safetensors (tied tensors stored once), atomically."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    seen: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen and t.shape == state_dict[seen[key]].shape:
            continue  # tied weight (embedding == softmax): restored by the module's tying
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # never export a broken model as finished
        raise UserError(
            f"not exporting {path}: {len(bad)} weight tensor(s) hold NaN / inf (e.g. {bad[0]}); "
            "lower train.lr or use train.precision=32-true, and re-run"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp)
        except Exception as e:  # safetensors' Rust writer: its OS errors arrive as SafetensorError
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            n = int(code[1])  # a full or read-only disk: the OSError every writer here raises
            raise OSError(n, os.strerror(n), str(path)) from None
        os.chmod(tmp, 0o666 & ~_UMASK)  # as every other artefact, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(module: torch.nn.Module, path: Path, *, strict: bool = True) -> None:
    """Load safetensors weights into ``module``; tied weights may be absent from the file. A
    missing, truncated or foreign file is one message naming it and the fix."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights {str(path)!r} not found: run the stage that produces it first")
    fix = f"delete the stage folder {str(path.parent)!r} and re-run the stage that made it"
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"weights {str(path)!r} are unreadable ({e}): {fix}") from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches are raised even when strict=False
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(
            f"weights {str(path)!r} do not fit the model ({first}): was the stage trained with "
            f"another model size? {fix}"
        ) from None
    tied = {n for n, p in module.named_parameters(remove_duplicate=False)} - {
        n for n, p in module.named_parameters()
    }
    missing = [m for m in missing if m not in tied]
    if strict and (missing or unexpected):
        raise UserError(
            f"weights {str(path)!r} do not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (was the stage trained with another model size?)"
        )


def weights_readable(path: Path) -> bool:
    """Whether a safetensors file's header and size are intact (reads the header only)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
        return True
    except (SafetensorError, OSError, ValueError):
        return False


@contextlib.contextmanager
def disk_errors_name(folder: Path) -> Iterator[None]:
    """An OSError naming no file is raised again naming ``folder``, the place to free: found with
    a real full disk, Lightning's ``hparams.yaml`` (written through fsspec) and TensorBoard's
    event writer raise ``No space left on device`` without a path."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(folder)) from e
        raise


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 8 MB blocks (~0.9 GB/s on 2 cores)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 23):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """``file_sha256``, or a one-line error naming the file it cannot read (manifests, text
    corpora, Hugging Face weights: read once, ~1 GB/s)."""
    try:
        return file_sha256(Path(path))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def json_digest(obj: Any) -> str:
    """sha256 hex of a JSON-able object (keys sorted; other values by ``str``): cache keys and
    stage identities."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_json(path: Path) -> Any:
    """A JSON artefact; an unreadable one is one message naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: re-run the stage that writes it") from None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path} is unreadable ({e}): delete its stage folder and re-run that stage"
        ) from None


def copy_artefact(src: Path, out: Path) -> None:
    """Copy a tokenizer file or folder into a stage folder atomically: a unique temp name,
    removed on any failure (a full disk leaves nothing behind that a re-run trips over)."""
    src = Path(src)
    dst = out / src.name
    if not src.is_dir():
        atomic_write_bytes(dst, src.read_bytes())
        return
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{src.name}{TMP_MARK}"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes 0700; artefacts are meant to be shared
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.replace(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- files that are what their checksums say -------------------------------------------------
# ``record_checksums`` writes ``checksums.json`` beside files that later work reads (a stage's
# weights and tokenizers, a cached tokenizer): size, sha256 and mtime. ``damaged`` checks the size
# always and the sha256 whenever a file's mtime is not the recorded one (an edit, a copy, a
# damaged disk), so an unchanged multi-GB tower is not hashed by every ``make`` call.
CHECKSUMS = "checksums.json"


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_checksums(folder: Path, names: list[str]) -> None:
    """Size, sha256 and mtime of ``names`` (paths relative to ``folder``) into its
    ``checksums.json``."""
    entries = {n: {**_stamp(folder / n), "sha256": file_sha256(folder / n)} for n in names}
    atomic_write_json(folder / CHECKSUMS, entries)


def damaged(folder: Path) -> str | None:
    """The first recorded file whose size or content changed since it was recorded (or is
    gone), with what changed; None when all are intact or nothing was recorded."""
    path = folder / CHECKSUMS
    if not path.is_file():
        return None
    entries = read_json(path)
    changed = False
    for name, rec in entries.items():
        try:
            now = _stamp(folder / name)
        except OSError:
            return f"{name} is missing"
        if now["bytes"] != rec["bytes"]:
            return f"{name} holds {now['bytes']} bytes, {rec['bytes']} when it was written"
        if now["mtime_ns"] != rec["mtime_ns"]:
            if file_sha256(folder / name) != rec["sha256"]:
                return f"{name} differs from the sha256 recorded when it was written"
            rec["mtime_ns"], changed = now["mtime_ns"], True  # copied intact: hash it once
    if changed:
        with contextlib.suppress(OSError):  # a read-only folder is checked, not updated
            atomic_write_json(path, entries)
    return None


def cache_intact(folder: Path, names: list[str], what: str) -> bool:
    """Whether a cached artefact may be reused: one that is not what its checksums say is said
    on the console (to be made again); one cached before checksums existed is recorded now."""
    if not (folder / CHECKSUMS).is_file():
        with contextlib.suppress(OSError):  # a read-only cache is used, not recorded
            record_checksums(folder, names)
        return True
    if problem := damaged(folder):
        print(f"[cache] {what} in {folder}: {problem}: made again")
        return False
    return True

"""Loading, overriding, validating, saving and listing configs (defaults <- YAML <- key=value).

OmegaConf reads the YAML files (so they may interpolate ``${...}``); validation is our own so that
every problem is reported at once, with the closest valid key for a typo.

A run's config is built as: schema defaults <- YAML file (``experiments/...``) <- ``key=value``
overrides (the Makefile turns its variables into such overrides). Everything is validated at
once and every problem is reported in one ``UserError`` that names the key: unknown keys get the
closest valid key as a suggestion, wrong types and out-of-range values say what is allowed.
The fully resolved config is saved as ``config.yaml`` in each stage folder and can be fed back
alone to re-run that stage.

Checks that need the machine (``train.accelerator=gpu`` without CUDA needs torch) are not made
here: ``zipper_pl.runs.machine.check_machine`` makes them, above this layer, before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zipper_pl.config.components import MIX, TASKS
from zipper_pl.config.schema import check_range, coerce
from zipper_pl.config.sections import MODALITY_NAMES, Config
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_text


def field_paths(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf key of a dataclass schema as a dotted path."""
    paths: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            paths.update(field_paths(tp, path + "."))
        else:
            paths[path] = f
    return paths


def _leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_types(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


def _is_dict_type(tp: Any) -> bool:
    return typing.get_origin(tp) is dict


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}``; a malformed item is a UserError."""
    out: dict[str, str] = {}
    bad = [a for a in args if "=" not in a or a.startswith("=")]
    if bad:
        raise UserError(
            f"overrides must look like key=value; got {', '.join(repr(b) for b in bad)}"
        )
    for a in args:
        k, v = a.split("=", 1)
        out[k.strip()] = v
    return out


def _set_path(tree: dict, path: str, value: Any) -> None:
    node = tree
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"config key {path!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, values, f"{prefix}{f.name}.")
        elif f"{prefix}{f.name}" in values:
            kwargs[f.name] = values[f"{prefix}{f.name}"]
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Schema defaults <- YAML file <- ``key=value`` overrides, validated all at once."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {str(p)!r} not found (see experiments/ for examples)")
        try:
            # OmegaConf reads the YAML so files may use ${...} interpolation between keys
            loaded = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            raise UserError(f"config file {str(p)!r} is not valid: {e}") from None
        if not loaded:
            raise UserError(f"config file {str(p)!r} is empty: give it at least one key")
        if not isinstance(loaded, dict):
            raise UserError(f"config file {str(p)!r} must hold a mapping of keys")
        tree = loaded
    leaf_types = _leaf_types(Config)
    flat = _flatten_with_types(tree, leaf_types)
    _apply_overrides(flat, overrides or [], leaf_types)
    return _validate(flat, leaf_types)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``key=value`` overrides applied as on the command line, validated again (a
    study's variants: ``ablation.variants``)."""
    leaf_types = _leaf_types(Config)
    flat = _flatten_with_types(to_dict(cfg), leaf_types)
    _apply_overrides(flat, overrides, leaf_types)
    return _validate(flat, leaf_types)


def _apply_overrides(flat: dict[str, Any], overrides: list[str], leaf_types: dict) -> None:
    for k, v in parse_overrides(overrides).items():
        value = yaml.safe_load(v) if v != "" else ""
        parent, _, entry = k.rpartition(".")
        if k not in leaf_types and _is_dict_type(leaf_types.get(parent)):
            # one entry of a dict-typed key: zip.intervals.text=2 keeps the other entries
            base = flat.get(parent, _default_at(parent))
            flat[parent] = {**(base if isinstance(base, dict) else {}), entry: value}
        else:
            flat[k] = value


def _default_at(path: str) -> Any:
    """The schema default of a dotted leaf key."""
    node: Any = Config()
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _flatten_with_types(tree: dict, leaf_types: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested YAML, keeping dict-typed leaves (e.g. ``zip.intervals``) whole."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and not _is_dict_type(leaf_types.get(path)):
            flat.update(_flatten_with_types(v, leaf_types, path + "."))
        else:
            flat[path] = v
    return flat


def _validate(flat: dict[str, Any], leaf_types: dict[str, Any]) -> Config:
    fields = field_paths(Config)
    problems: list[str] = []
    values: dict[str, Any] = {}
    sections = {k.rsplit(".", 1)[0] for k in leaf_types if "." in k}
    sections |= {".".join(k.split(".")[:2]) for k in leaf_types if k.count(".") >= 2}
    for key, raw in flat.items():
        if key in sections:  # `train: 5` in a YAML file
            problems.append(f"{key} is a section of keys, got {raw!r}")
            continue
        if key not in leaf_types:
            close = difflib.get_close_matches(key, list(leaf_types), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown config key {key!r}{hint}")
            continue
        try:
            value = coerce(raw, leaf_types[key])
        except ValueError as e:
            problems.append(f"{key}: {e}")
            continue
        reason = check_range(value, fields[key].metadata)
        if reason:
            problems.append(f"{key}: {reason}")
            continue
        values[key] = value
    if not problems:
        try:
            cfg = _build(Config, values)
        except (TypeError, ValueError) as e:
            raise UserError(f"invalid configuration: {e}") from None
        problems = _check_settings(cfg)
    if problems:
        raise UserError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


FREEZE_WORDS = ("none", "both", "all")  # besides tower names (zip.towers), comma-separated


def _check_settings(cfg: Config) -> list[str]:
    """Settings whose valid values depend on other keys: checked here, with the rest, so a run
    never trains for a minute before failing on them (those that depend on the machine:
    ``zipper_pl.runs.machine``)."""
    problems = []
    t = cfg.train
    d = t.devices.strip()
    parts = [x.strip() for x in d.split(",")]
    if d != "auto" and not (
        all(x.isdigit() for x in parts) and (len(parts) > 1 or int(parts[0]) >= 1)
    ):
        problems.append(
            f"train.devices: {t.devices!r} is not a count >= 1, 'auto' or a list like '0,1'"
        )
    unknown = [t for t in cfg.zip.towers if t not in MODALITY_NAMES]
    if unknown or len(set(cfg.zip.towers)) != len(cfg.zip.towers) or len(cfg.zip.towers) < 2:
        problems.append(
            f"zip.towers: {cfg.zip.towers}; list two or more distinct modalities of "
            f"{', '.join(MODALITY_NAMES)}"
        )
    needed = {
        m for t in (MIX if cfg.data.task == "mix" else [cfg.data.task]) for m in TASKS[t].modalities
    }
    if not needed <= set(cfg.zip.towers):
        problems.append(
            f"data.task={cfg.data.task} needs the towers {sorted(needed)}; zip.towers has "
            f"{cfg.zip.towers}: add the missing ones (and their inputs.<modality> folders)"
        )
    allowed = ", ".join([*FREEZE_WORDS, *cfg.zip.towers])
    a = cfg.ablation
    for key, value in [("zip.freeze", cfg.zip.freeze), *(("ablation.freeze", f) for f in a.freeze),
                       *(("ablation.asr_freeze", f) for f in a.asr_freeze)]:  # fmt: skip
        freeze = {x.strip() for x in value.split(",") if x.strip()}
        if not freeze or not (
            freeze <= set(cfg.zip.towers) or (len(freeze) == 1 and freeze <= set(FREEZE_WORDS))
        ):
            problems.append(f"{key}: {value!r}; use {allowed} (or towers joined by ,)")
    if t.patience and not t.select_best:
        problems.append(
            f"train.patience={t.patience} stops on the validation score that train.select_best "
            "keeps: set train.select_best=true, or train.patience=0"
        )
    return problems


def to_dict(cfg: Any) -> dict:
    """A plain nested dict of a config (for YAML, hyper-parameter logging, hashing)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe_schema(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every leaf key; used by ``python -m zipper_pl keys``."""
    rows = []
    defaults = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe_schema(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", getattr(defaults, f.name), f.metadata["doc"]))
    return rows

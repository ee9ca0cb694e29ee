"""Checks of a config against the machine it runs on, and the threads a stage runs on.

They need torch, so they sit above the config layer (which checks everything else without
importing it). The command line and every stage entry point run them right after the config is
loaded, before any work, and report problems as ``load_config`` does: one line per problem.
"""

from __future__ import annotations

import torch

from zipper_pl.config import Config
from zipper_pl.errors import UserError


def machine_problems(cfg: Config) -> list[str]:
    """One line per setting this machine cannot honour."""
    problems = []
    t = cfg.train
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(f"train.accelerator: {t.accelerator!r} but no CUDA GPU is visible here; "
                        "use auto or cpu")  # fmt: skip
    return problems


def check_machine(cfg: Config) -> Config:
    """``cfg`` unchanged, or a ``UserError`` listing what this machine cannot run."""
    problems = machine_problems(cfg)
    if problems:
        raise UserError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def use_threads(cfg: Config) -> Config:
    """Apply ``train.threads`` now, before a stage reads or tokenizes anything. Applied only when
    the Trainer was built, the vocoder of `make demo` (one thread per lane) first loaded and
    tokenized its 3,000 utterances on torch's default of every core, beside the other lane's
    stage: 29 s of loading, against ~8 s alone."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return cfg

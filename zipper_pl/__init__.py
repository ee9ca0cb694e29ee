"""zipper_pl: compose pretrained unimodal decoders into a multimodal generator (Zipper).

``zipper_pl.load(stage_folder)`` returns a fine-tuned model with ``transcribe``, ``speak`` and
``generate`` (see ``zipper_pl/api.py``).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str):
    # torch and the models are imported on first use of the API, not by `import zipper_pl`
    # (the command line imports this package first and must start fast)
    if name == "load":
        from zipper_pl.api import load

        return load
    raise AttributeError(f"module 'zipper_pl' has no attribute {name!r}")

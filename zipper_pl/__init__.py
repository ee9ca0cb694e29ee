"""zipper_pl: compose pretrained unimodal decoders into a multimodal generator (Zipper)."""

__version__ = "0.1.0"

"""Corpora: the embedded world, LibriSpeech / JSONL readers, manifests, audio I/O, text
normalisation, phonemes."""

"""Scoring finished stages (WER from tokens and from audio), the listening page, retention, and the
tables."""

"""The command line's stage entry points, side by side: none imports another
(tests/test_layers.py)."""

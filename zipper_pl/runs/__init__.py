"""Stage folders: their identity, names, inventory, provenance, checksums, the machine check, the
Lightning Trainer, and a finished stage loaded as a model."""

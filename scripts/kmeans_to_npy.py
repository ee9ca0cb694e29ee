"""Convert a published HuBERT k-means model into the centroids file ``audio.ssl_centroids`` reads.

The k-means models published with HuBERT / GSLM / mHuBERT (``km100.bin``, ``km500.bin``, ...)
are joblib pickles of scikit-learn's KMeans / MiniBatchKMeans. THIS SCRIPT UNPICKLES THE FILE,
and unpickling runs whatever code the file names: convert only a file you trust (from its
publisher, checksum checked), and say so with ``--trust-pickle``. It writes the model's
``cluster_centers_`` [K, D] as a float32 ``.npy``, which zipper_pl reads with
``allow_pickle=False``: the pickle is opened once, here, and never at run time.

    python scripts/kmeans_to_npy.py km500.bin km500.npy --trust-pickle
    make pretrain-speech CODEC=hubert ARGS="audio.ssl_centroids=km500.npy audio.units_k=500"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import joblib
import numpy as np

WARNING = (
    "{src} is a pickle: loading it runs whatever code it names. Convert it only if you trust "
    "the file (from its publisher, checksum checked), by adding --trust-pickle."
)


def convert(src: Path, dst: Path) -> np.ndarray:
    """Unpickle ``src`` (the caller vouches for it) and write its centroids to ``dst``."""
    model = joblib.load(src)  # the one unpickling in zipper_pl, run by the user on purpose
    centers = getattr(model, "cluster_centers_", None)
    if not isinstance(centers, np.ndarray) or centers.ndim != 2 or centers.dtype.kind != "f":
        raise SystemExit(f"{src} holds no fitted k-means (a float cluster_centers_ [K, D])")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(tmp, "wb") as f:  # np.save on a file object: the name is not given a .npy suffix
        np.save(f, centers.astype(np.float32), allow_pickle=False)
    os.replace(tmp, dst)  # atomic: a half-written file is never read as centroids
    return centers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="joblib-pickled sklearn KMeans (e.g. km500.bin)")
    p.add_argument("dst", type=Path, help="float32 .npy of the centroids [K, D] to write")
    p.add_argument("--trust-pickle", action="store_true", help="I trust SRC: unpickle it")
    args = p.parse_args(argv)
    if not args.trust_pickle:
        print(WARNING.format(src=args.src), file=sys.stderr)
        return 2
    centers = convert(args.src, args.dst)
    k, d = centers.shape
    print(f"wrote {k} x {d} centroids to {args.dst}")
    print(f'use: ARGS="audio.ssl_centroids={args.dst} audio.units_k={k}" (a {d}-wide layer)')
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The recognize task's similarity step: a batch of query vectors against a whole gallery.

Times exactly what a request runs after the encoder (``Gallery.top_k``: one float32
matrix product, per-label best in exemplar mode, top-k), with the matrix product
alone beside it, plus the one-off cost of loading such a gallery from .npz (what a
reload does off to the side before the swap).

    python benchmarks/bench_similarity.py                       # 100,000 x 512 gallery, batch 32
    python benchmarks/bench_similarity.py --gallery 1000000 --threads 4

Prints a table, then one JSON object with the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Milliseconds: median, p90 and best of ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000.0)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "best_ms": samples[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=100_000, help="vectors in the gallery (default 100000)")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (default 512)")
    parser.add_argument("--batch", type=int, default=32, help="query vectors per request (default 32)")
    parser.add_argument("--top-k", type=int, default=5, help="candidates per query (default 5)")
    parser.add_argument("--exemplars", type=int, default=10,
                        help="vectors per label in the exemplar case (default 10)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per case (default 30)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads (sets OMP/OPENBLAS/MKL_NUM_THREADS before numpy loads)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)

    import numpy as np

    from kubeinfer.runtime.gallery import Gallery, l2_normalize, load_file, save_npz

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    queries = l2_normalize(rng.standard_normal((args.batch, args.dim), dtype=np.float32))
    one_per_label = Gallery(vectors, [f"label-{i}" for i in range(args.gallery)], "benchmark")
    labels = args.gallery // args.exemplars
    exemplar = Gallery(vectors, [f"label-{i % labels}" for i in range(args.gallery)], "benchmark")

    results: dict[str, Any] = {
        "gallery": args.gallery, "dim": args.dim, "batch": args.batch, "top_k": args.top_k,
        "cpu_count": os.cpu_count(), "numpy": np.__version__,
        "matmul_only": timed(lambda: queries @ one_per_label.vectors.T, args.repeats),
        "top_1_one_vector_per_label": timed(lambda: one_per_label.top_k(queries, 1), args.repeats),
        f"top_{args.top_k}_one_vector_per_label": timed(lambda: one_per_label.top_k(queries, args.top_k),
                                                        args.repeats),
        f"top_{args.top_k}_exemplar_{labels}_labels": timed(lambda: exemplar.top_k(queries, args.top_k),
                                                            args.repeats),
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gallery.npz"
        save_npz(one_per_label, path)
        results["npz_megabytes"] = path.stat().st_size / 1e6
        results["load_npz_for_reload"] = timed(lambda: load_file(path), max(3, args.repeats // 10), warmup=1)

    print(f"similarity step: {args.batch} queries x {args.gallery:,} x {args.dim} gallery "
          f"({os.cpu_count()} CPUs, numpy {np.__version__})")
    for name, value in results.items():
        if isinstance(value, dict):
            print(f"  {name:<40} median {value['median_ms']:8.2f} ms   p90 {value['p90_ms']:8.2f} ms   "
                  f"best {value['best_ms']:8.2f} ms")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end speed of the synthetic data writer: sample, skin, render, encode, write.

Usage: python benchmarks/bench_synth.py [--num 2000] [--size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    from meshrec.data.synthetic import write_synthetic_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_dataset(folder + "/warm", 64, size=args.size, progress=False)  # GL context, caches
        start = time.perf_counter()
        write_synthetic_dataset(folder + "/set", args.num, size=args.size, progress=False)
        seconds = time.perf_counter() - start
    print(f"| samples | size | seconds | images/s |\n|---:|---:|---:|---:|\n| {args.num} | {args.size} | {seconds:.1f} | {args.num / seconds:.0f} |")


if __name__ == "__main__":
    main()

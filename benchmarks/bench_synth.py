"""End-to-end speed of the synthetic data writer: sample, skin, render, encode, write.

Usage: python benchmarks/bench_synth.py [--num 2000] [--size 128] [--workers 2] [--breakdown]

``--breakdown`` adds a table of the time per phase (from ``SynthSummary``): wall and CPU
milliseconds per sample, summed over the worker processes. On a machine shared with other
jobs, wall time per phase also counts waiting for a core; CPU time is what a phase costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    from meshrec.data.synthetic import write_synthetic_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (1: in this process)")
    parser.add_argument("--breakdown", action="store_true", help="also print the time per phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_dataset(folder + "/warm", 64, size=args.size, progress=False, workers=args.workers)
        cpu = _cpu_seconds()
        start = time.perf_counter()
        summary = write_synthetic_dataset(
            folder + "/set", args.num, size=args.size, progress=False, workers=args.workers
        )
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
    print(
        "| samples | size | workers | seconds | images/s | CPU ms/sample |\n|---:|---:|---:|---:|---:|---:|\n"
        f"| {args.num} | {args.size} | {args.workers} | {seconds:.1f} | {args.num / seconds:.0f} "
        f"| {cpu / args.num * 1000:.2f} |"
    )
    if args.breakdown:
        total_cpu = sum(summary.cpu_seconds.values()) or 1.0
        print("\n| phase | wall ms/sample | CPU ms/sample | share of CPU |\n|---|---:|---:|---:|")
        for phase, wall in summary.seconds.items():
            phase_cpu = summary.cpu_seconds.get(phase, 0.0)
            print(
                f"| {phase} | {wall / args.num * 1000:.3f} | {phase_cpu / args.num * 1000:.3f} "
                f"| {phase_cpu / total_cpu:.0%} |"
            )


if __name__ == "__main__":
    main()

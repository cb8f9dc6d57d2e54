"""Forward time of manolayer.ManoLayer vs smplx.MANO on the same MANO-format arrays.

Usage: python benchmarks/bench_manolayer.py [--repeats 1000] [--threads 2] [--profile]

Both layers get a random 778-vertex model with pose correctives (the official file's
shapes), float32 on the CPU, axis-angle input without PCA, and the same random inputs.
Prints the median forward time over repeats, the ratio, and the largest output difference.
``--profile`` also prints, at the first batch size, each layer's tensor operations (at
batch 1 their number is the cost) and the torch profiler's table for ManoLayer.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# operations that only make a view (no kernel runs); left out of the operation count
_VIEW_OPS = {
    "view", "_unsafe_view", "as_strided", "slice", "select", "unsqueeze", "squeeze", "expand", "transpose", "t",
    "reshape", "flatten", "unflatten", "unbind", "alias", "permute", "detach", "split", "split_with_sizes", "narrow",
}  # fmt: skip


class _OperationLog(TorchDispatchMode):
    """Records the name of every aten operation run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def kernel_operations(forward) -> list[str]:
    """Names of the aten operations one call of ``forward`` runs, views left out."""
    with _OperationLog() as log:
        forward()
    return [name for name in log.names if name not in _VIEW_OPS]


def print_profile(name_to_forward: dict, profiled_name: str) -> None:
    for name, forward in name_to_forward.items():
        operations = kernel_operations(forward)
        print(f"{name}: {len(operations)} operations (views left out): {' '.join(operations)}")
    from torch.profiler import ProfilerActivity, profile

    forward = name_to_forward[profiled_name]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(100):
            forward()
    print(f"{profiled_name}, 100 calls (the profiler adds its own overhead to every operation):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))



def interleaved_medians_ms(first, second, repeats: int) -> tuple[float, float]:
    """Median time of each callable, alternating them call by call so that both see the
    same machine load (this CPU is shared; sequential blocks drift by 2x)."""
    for _ in range(max(5, repeats // 10)):
        first(), second()
    times_first, times_second = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        times_first.append(middle - start)
        times_second.append(time.perf_counter() - middle)
    return statistics.median(times_first) * 1e3, statistics.median(times_second) * 1e3


def main() -> None:
    import smplx

    from manolayer.testing import random_mano_arrays
    from manolayer import ManoLayer
    from manolayer.io import ManoModel, model_from_arrays

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--profile", action="store_true", help="operation counts and a profile at the first batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    arrays = random_mano_arrays()
    model: ManoModel = model_from_arrays(arrays, "right", source="random-778")
    ours = ManoLayer(model, use_pca=False, flat_hand_mean=False)
    with tempfile.TemporaryDirectory() as folder:
        struct = smplx.utils.Struct(**{**arrays, "J_regressor": model.J_regressor, "shapedirs": model.shapedirs})
        theirs = smplx.MANO(model_path=folder, data_struct=struct, use_pca=False, flat_hand_mean=False)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, interleaved medians of {args.repeats} runs (batch >= 512: a fifth)")
    print(f"| batch | smplx.MANO (ms) | ManoLayer (ms) | speed-up | max |diff| (m) |")
    print(f"|---:|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    for batch in args.batches:
        inputs = dict(
            global_orient=torch.randn(batch, 3, generator=generator),
            hand_pose=0.5 * torch.randn(batch, 45, generator=generator),
            betas=torch.randn(batch, 10, generator=generator),
            transl=torch.randn(batch, 3, generator=generator),
        )
        repeats = args.repeats if batch < 512 else max(20, args.repeats // 5)
        with torch.inference_mode():
            theirs_ms, ours_ms = interleaved_medians_ms(lambda: theirs(**inputs), lambda: ours(**inputs), repeats)
            diff = max(
                (ours(**inputs).vertices - theirs(**inputs).vertices).abs().max().item(),
                (ours(**inputs).mano_joints - theirs(**inputs).joints).abs().max().item(),
            )
        print(f"| {batch} | {theirs_ms:.3f} | {ours_ms:.3f} | {theirs_ms / ours_ms:.2f}x | {diff:.1e} |")
        if args.profile and batch == args.batches[0]:
            with torch.inference_mode():
                print_profile({"smplx.MANO": lambda: theirs(**inputs), "ManoLayer": lambda: ours(**inputs)}, "ManoLayer")


if __name__ == "__main__":
    main()

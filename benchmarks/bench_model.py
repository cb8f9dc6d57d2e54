"""Cost of the reconstruction network: parameters, multiply-adds per stage, latency, throughput.

Usage: python benchmarks/bench_model.py [--size 128] [--repeats 50] [--checkpoint C] [--train-steps 10]
                                        [--profile] [model settings, e.g. refinement.finest_level=0]

Multiply-adds are counted by torch.utils.flop_counter (FLOPs / 2; matmuls and convolutions —
gathers, grid_sample and element-wise ops are not counted). Latency is the median of repeated
batch-1 forwards under torch.inference_mode; throughput is images/s at batch 32; both for the
inference copy that ``predict`` and ``evaluate`` run (``model.for_inference()``: batch norms folded,
the keypoint head's selected groups only, the stem and the loop pass replayed from traced graphs),
and, interleaved with it, the same copy without traced graphs and the model as trained. Fixed depth t
runs exactly t loop passes (tau = 1 never exits); "gate" uses the configured tau (with untrained
weights its decisions are arbitrary: pass --checkpoint to measure a trained gate).

The training step (``--train-steps`` > 0) is what ``meshrec train`` runs per batch: forward in
training mode (every loop pass), every configured loss, backward, AdamW; on one batch of freshly
rendered, fully labelled hands. The same network without its refinement (same weights
otherwise) is timed interleaved with it, step for step, so both see the same machine.

``--profile`` times the stages of a batch-1 forward at T_max (the stem, one loop pass, the stem
with every pass: what the forward replays as one graph at T_max, and the whole forward) run
eagerly and replayed from the inference copy's traced graphs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def multiply_adds(model, images, **kwargs) -> tuple[float, dict[str, float]]:
    """Total and per-top-level-module multiply-adds (millions) of one forward."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(images, **kwargs)
    per_module = {}
    for name, counts in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2 or (len(parts) == 3 and parts[1] == "refiner"):
            per_module[".".join(parts[1:])] = sum(counts.values()) / 2e6
    return counter.get_total_flops() / 2e6, per_module


def median_seconds(function, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from meshrec.models.reconstructor import HandMeshReconstructor, ModelConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint or weights file, 'synthetic-hands' for the bundled model (measures the trained gate)")
    parser.add_argument("--train-steps", type=int, default=10, help="interleaved training steps to time (0: none)")
    parser.add_argument("--no-inference", action="store_true", help="only the training step")
    parser.add_argument("--profile", action="store_true", help="batch-1 latency per stage, eager and traced")
    parser.add_argument("settings", nargs="*", help="ModelConfig overrides for the untrained model, as in meshrec train")
    args = parser.parse_args()

    if args.checkpoint:
        model = HandMeshReconstructor.load(args.checkpoint)
    else:
        from meshrec.config import apply_overrides, config_from_dict, config_to_dict

        settings = apply_overrides(config_to_dict(ModelConfig(image_size=args.size)), args.settings, ModelConfig)
        model = HandMeshReconstructor(config_from_dict(ModelConfig, settings, where="model"))
        print(f"settings: {' '.join(args.settings) or 'defaults'}")
    if not args.no_inference:
        time_inference(model, args)
    if args.profile:
        profile_inference(model, args.size, args.repeats)
    if args.train_steps > 0:
        compare_training_steps(model, args.size, args.batch, args.train_steps)


def time_inference(model, args) -> None:
    """Parameters, multiply-adds per stage, latency and throughput per depth (printed tables)."""
    model.eval()
    t_max = model.config.gate.max_passes
    one = torch.rand(1, 3, args.size, args.size)
    many = torch.rand(args.batch, 3, args.size, args.size)

    parameters = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    print(f"threads: {torch.get_num_threads()}, input {args.size}x{args.size}, hand model {model.num_vertices} vertices, T_max {t_max}\n")
    print("| part | parameters |\n|---|---:|")
    for name, count in parameters.items():
        print(f"| {name} | {count / 1e3:.0f}k |")
    print(f"| total | {sum(parameters.values()) / 1e6:.2f}M |\n")

    total, per_module = multiply_adds(model, one, max_passes=t_max, exit_threshold=1.0)
    no_loop, _ = multiply_adds(model, one, max_passes=0)
    print(f"multiply-adds per image at T_max = {t_max}: {total:.1f}M\n")
    print("| stage | M multiply-adds |\n|---|---:|")
    for name, value in per_module.items():
        print(f"| {name} | {value:.1f} |")
    print(f"| one loop pass | {(total - no_loop) / max(t_max, 1):.1f} |\n")

    settings = [(f"fixed {t}", dict(max_passes=t, exit_threshold=1.0)) for t in range(0, t_max + 1)]
    settings.append((f"gate (tau={model.config.gate.exit_threshold})", {}))
    # multiply-adds first: timing right after a FlopCounterMode run was up to 50x slow here
    costs = {label: multiply_adds(model, one, **kwargs)[0] for label, kwargs in settings}
    # what predict and evaluate run: batch norms folded, the keypoint head's selected groups only,
    # traced graphs (traced at a signature's third call, in the warm-up calls below)
    inference = model.for_inference()
    networks = {"inference copy": inference, "inference copy without traced graphs": model.for_inference(traced=False),
                "as trained (eval mode)": model}
    times: dict[tuple[str, str], tuple[float, float]] = {}
    with torch.inference_mode():
        for network in networks.values():
            for _ in range(3):  # first calls build oneDNN kernels for each shape: keep them out of the table
                network(one, exit_threshold=1.0)
                network(many, exit_threshold=1.0)
        for label, kwargs in settings:
            for name, network in networks.items():  # interleaved: both see the same machine
                latency = median_seconds(lambda: network(one, **kwargs), args.repeats)
                batch_time = median_seconds(lambda: network(many, **kwargs), max(5, args.repeats // 5), warmup=3)
                times[name, label] = latency, batch_time
        passes = {label: inference(many, **kwargs).passes_used.float().mean().item() for label, kwargs in settings}
    for name in networks:
        print(f"{name}:\n")
        print(f"| depth | M multiply-adds | batch 1 latency (ms) | batch {args.batch} images/s | mean passes |\n|---|---:|---:|---:|---:|")
        for label, _ in settings:
            latency, batch_time = times[name, label]
            print(f"| {label} | {costs[label]:.1f} | {latency * 1e3:.1f} | {args.batch / batch_time:.0f} | {passes[label]:.2f} |")
        print()
    # what each predict_images / evaluate call pays at batch 1 (gate): for_inference() (the kept
    # copy, graphs and all) and a forward under no_grad, against a new copy per call
    with torch.no_grad():
        kept = median_seconds(lambda: model.for_inference()(one), args.repeats)
        fresh = median_seconds(lambda: model._make_inference_copy(traced=True)(one), max(5, args.repeats // 5))
    print("| batch 1, one call as predict_images / evaluate make it | ms |\n|---|---:|")
    print(f"| for_inference() (the kept copy) + forward under no_grad | {kept * 1e3:.1f} |")
    print(f"| a new inference copy + forward (each call, before the copy was kept) | {fresh * 1e3:.1f} |\n")

def profile_inference(model, size: int, repeats: int) -> None:
    """Batch-1 latency per stage at T_max (median ms): the stem (everything before the loop), one
    loop pass and the whole forward, each run eagerly and replayed from its traced graph."""
    from meshrec.sides import SIDE_LEFT

    inference, eager = model.for_inference(), model.for_inference(traced=False)
    one = torch.rand(1, 3, size, size)
    images, K, side = inference.check_inputs(one, None, None)
    left, image_size = side == SIDE_LEFT, (size, size)
    graphs = inference._traced  # the copy's TracedMethods, read directly to time the stages apart
    t_max = model.config.gate.max_passes
    with torch.inference_mode():
        state = inference.stem(images, K, left, any_left=False).loop
        progress = torch.full((1, 1), 1.0 / max(t_max, 1))
        stages = {
            "stem": (lambda: inference.stem(images, K, left, any_left=False), lambda: graphs["stem"](images, K, left, any_left=False)),
            "one loop pass": (lambda: inference.refiner.loop_pass(state, progress, image_size=image_size),
                              lambda: graphs["loop_pass"](state, progress, image_size=image_size)),
            f"stem + {t_max} passes (at T_max the forward's one graph)": (
                lambda: inference.stem(images, K, left, any_left=False, temperature=None, fixed_passes=t_max, max_passes=t_max),
                lambda: graphs["stem"](images, K, left, any_left=False, temperature=None, fixed_passes=t_max, max_passes=t_max),
            ),
            "whole forward at T_max": (lambda: eager(one, exit_threshold=1.0), lambda: inference(one, exit_threshold=1.0)),
        }
        print("\nbatch 1, per stage (median ms):\n\n| stage | eager | traced graph |\n|---|---:|---:|")
        for name, (run_eagerly, run_traced) in stages.items():
            print(f"| {name} | {median_seconds(run_eagerly, repeats) * 1e3:.2f} | {median_seconds(run_traced, repeats) * 1e3:.2f} |")


def training_step_seconds(model, batch, steps: int) -> list[float]:
    """Seconds of ``steps`` training steps of ``model`` on ``batch`` (forward, losses, backward, AdamW)."""
    from meshrec.losses import LossConfig, hand_losses

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        prediction = model(batch.image, batch.K, batch.side)
        losses = hand_losses(
            prediction, batch, LossConfig(), step=10**6, joint_regressor=model.joint_regressor,
            mesh_levels=model.mesh_levels, faces=model.faces,
        )
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def compare_training_steps(model, size: int, batch_size: int, steps: int) -> None:
    """Median training step with and without the refinement, interleaved (see the module docstring)."""
    import copy
    import dataclasses

    from meshrec.data.sample import collate_hand_samples
    from meshrec.data.synthetic import SyntheticHandDataset
    from meshrec.models.reconstructor import HandMeshReconstructor

    dataset = SyntheticHandDataset(batch_size, size=size, seed=0, model=model.config.hand_model)
    batch = collate_hand_samples([dataset[i] for i in range(batch_size)])
    with_refinement = copy.deepcopy(model)
    config = dataclasses.replace(model.config, refinement=dataclasses.replace(model.config.refinement, enabled=False), weights=None)
    without = HandMeshReconstructor(config)
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("refiner.")})
    on, off = [], []
    training_step_seconds(with_refinement, batch, 2)  # first steps build kernels and optimiser state
    training_step_seconds(without, batch, 2)
    for _ in range(steps):
        on += training_step_seconds(with_refinement, batch, 1)
        off += training_step_seconds(without, batch, 1)
    median_on, median_off = statistics.median(on), statistics.median(off)
    print(f"\ntraining step, batch {batch_size}, {steps} interleaved steps each (median):\n")
    print("| network | s per step | images/s |\n|---|---:|---:|")
    print(f"| refinement off | {median_off:.3f} | {batch_size / median_off:.0f} |")
    print(f"| refinement + loop (T_max = {model.config.gate.max_passes}) | {median_on:.3f} | {batch_size / median_on:.0f} |")
    print(f"\nratio on / off: {median_on / median_off:.2f}")


if __name__ == "__main__":
    main()

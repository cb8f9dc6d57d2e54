"""Rendering throughput per backend: images/s at 128x128, batch 32, a ~3k-face closed mesh.

Run: ``.venv/bin/python benchmarks/bench_render.py [--repeats 5] [--batch 32] [--size 128]``.
Prints a table of the median over repeats (after one warm-up call). A backend that cannot
run here is listed with the reason. The pytorch3d repeats are capped (it is slow on CPU),
and the differentiable soft silhouette (forward + backward, default 8 faces per pixel)
runs on a smaller batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import trimesh

from meshrec.geometry.camera import default_intrinsics
from meshrec.render import RendererUnavailableError, get_renderer, soft_silhouette


def hand_sized_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A closed capsule, about 10 x 3 cm, ~3k faces, posed at ~0.4 m in front of the camera."""
    capsule = trimesh.creation.capsule(height=0.07, radius=0.015, count=[40, 40])
    rotate = trimesh.transformations.rotation_matrix(np.pi / 2.5, [1.0, 0.3, 0.0])
    capsule.apply_transform(rotate)
    capsule.apply_translation([0.01, -0.005, 0.4])
    return np.asarray(capsule.vertices), np.asarray(capsule.faces)


def images_per_second(call, images: int, repeats: int) -> float:
    call()  # warm-up: context creation, shader compilation, buffer allocation
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return images / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=2, help="repeats for pytorch3d on CPU")
    parser.add_argument("--silhouette-batch", type=int, default=8, help="batch for soft_silhouette (slow)")
    args = parser.parse_args()

    vertices, faces = hand_sized_mesh()
    rng = np.random.default_rng(0)
    # Jitter per sample so no backend can reuse one image for the whole batch.
    batch_vertices = torch.tensor(vertices[None] + rng.normal(0, 0.002, (args.batch, 1, 3)), dtype=torch.float32)
    faces_t = torch.tensor(faces)
    K = default_intrinsics(args.size, batch=args.batch)
    print(f"mesh: {len(vertices)} vertices, {len(faces)} faces; batch {args.batch}; "
          f"{args.size}x{args.size}; torch threads {torch.get_num_threads()}")

    rows = []
    for backend in ("gl", "pytorch3d"):
        try:
            renderer = get_renderer(backend)
            repeats = args.repeats if backend == "gl" else args.slow_repeats
            rate = images_per_second(
                lambda: renderer.render(batch_vertices, faces_t, K, args.size), args.batch, repeats
            )
            rows.append((f"{backend} render (rgb+mask+depth)", f"{rate:,.1f}"))
        except RendererUnavailableError as error:
            rows.append((f"{backend} render", f"unavailable: {error}"))
    try:
        requires_grad = batch_vertices[: args.silhouette_batch].clone().requires_grad_(True)
        K_silhouette = K[: args.silhouette_batch]

        def silhouette_forward_backward():
            soft_silhouette(requires_grad, faces_t, K_silhouette, args.size).sum().backward()

        rate = images_per_second(silhouette_forward_backward, len(requires_grad), args.slow_repeats)
        rows.append((f"pytorch3d soft_silhouette fwd+bwd (batch {len(requires_grad)})", f"{rate:,.1f}"))
    except RendererUnavailableError as error:
        rows.append(("pytorch3d soft_silhouette", f"unavailable: {error}"))

    width = max(len(name) for name, _ in rows)
    print(f"{'backend':<{width}}  images/s (median)")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

"""A random but well-formed MANO-format model, for tests and benchmarks.

The official MANO files cannot be shipped; these arrays have their shapes and storage
types (uint32 faces, 16-joint tree, 10 betas, 135 pose correctives, 45x45 pose PCA).
"""

from __future__ import annotations

import numpy as np

from manolayer.joints import MANO_PARENTS


def random_mano_arrays(num_vertices: int = 778, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but well-formed MANO arrays: hand-sized, weights and regressor rows sum to 1."""
    rng = np.random.default_rng(seed)
    num_joints = 16
    v_template = rng.normal(scale=0.03, size=(num_vertices, 3))
    faces = np.stack([rng.permutation(num_vertices)[:3] for _ in range(2 * num_vertices)]).astype(np.uint32)
    weights = rng.random((num_vertices, num_joints)) ** 4
    weights /= weights.sum(1, keepdims=True)
    j_regressor = np.where(rng.random((num_joints, num_vertices)) < 0.05, rng.random((num_joints, num_vertices)), 0.0)
    j_regressor[:, 0] += 1e-3
    j_regressor /= j_regressor.sum(1, keepdims=True)
    components, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    return {
        "v_template": v_template,
        "f": faces,
        "shapedirs": rng.normal(scale=0.005, size=(num_vertices, 3, 10)),
        "posedirs": rng.normal(scale=0.003, size=(num_vertices, 3, 135)),
        "J_regressor": j_regressor,
        "weights": weights,
        "kintree_table": np.stack([np.array(MANO_PARENTS), np.arange(num_joints)]).astype(np.int64),
        "hands_components": components.T * rng.uniform(0.5, 2.0, size=(45, 1)),
        "hands_mean": rng.normal(scale=0.2, size=45),
        "hands_coeffs": rng.normal(size=(20, 45)),
        "J": j_regressor @ v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }

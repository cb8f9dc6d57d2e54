"""ManoLayer: equivalence with smplx, properties, rotation formats, gradients, bad input."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from manolayer import ManoLayer, ManoModel, PoseInputError, load_mano, mirror_model
from manolayer.errors import ManoError
from manolayer.lbs import (
    KinematicPlan,
    RodriguesConstants,
    axis_angle_to_homogeneous,
    forward_kinematics,
    forward_kinematics_reference,
    kinematic_levels,
    skin_vertices,
    skin_vertices_reference,
)
from manolayer.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
)
from manolayer.testing import random_mano_arrays
from tests.mano_fixtures import write_official_style_pickle

smplx = pytest.importorskip("smplx")
F64 = torch.float64


def random_inputs(batch: int, num_hand: int = 45, seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return dict(
        global_orient=torch.randn(batch, 3, generator=g, dtype=dtype),
        hand_pose=0.6 * torch.randn(batch, num_hand, generator=g, dtype=dtype),
        betas=torch.randn(batch, 10, generator=g, dtype=dtype),
        transl=0.1 * torch.randn(batch, 3, generator=g, dtype=dtype),
    )


def smplx_mano(model: ManoModel, tmp_path, **kwargs):
    arrays = dict(
        v_template=model.v_template,
        f=model.faces,
        shapedirs=model.shapedirs,
        posedirs=model.posedirs,
        J_regressor=model.J_regressor,
        weights=model.weights,
        kintree_table=np.stack([model.parents, np.arange(16)]),
        hands_components=model.hands_components,
        hands_mean=model.hands_mean,
    )
    return smplx.MANO(
        model_path=str(tmp_path), data_struct=smplx.utils.Struct(**arrays), is_rhand=model.side == "right",
        dtype=F64, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def left_pickle(tmp_path_factory, mano_arrays):
    """A MANO_LEFT.pkl made like the official one: the mirror of the right, with the
    known wrong sign on shapedirs[:, 0, :]."""
    right = load_mano(write_official_style_pickle(tmp_path_factory.mktemp("r") / "MANO_RIGHT.pkl", mano_arrays))
    left = mirror_model(right)
    arrays = dict(mano_arrays)
    arrays.update(
        v_template=left.v_template,
        f=left.faces.astype(np.uint32),
        shapedirs=left.shapedirs * np.array([-1.0, 1.0, 1.0])[None, :, None],
        posedirs=left.posedirs,
        hands_components=left.hands_components,
        hands_mean=left.hands_mean,
    )
    return write_official_style_pickle(tmp_path_factory.mktemp("l") / "MANO_LEFT.pkl", arrays)


# --------------------------------------------------------------------------- equivalence with smplx


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(
    "use_pca, num_pca_comps, flat_hand_mean", [(False, 45, False), (False, 45, True), (True, 6, False), (True, 12, True)]
)
def test_matches_smplx(side, use_pca, num_pca_comps, flat_hand_mean, right_pickle, left_pickle, tmp_path):
    model = load_mano(right_pickle if side == "right" else left_pickle)
    assert model.side == side
    ours = ManoLayer(model, use_pca=use_pca, num_pca_comps=num_pca_comps, flat_hand_mean=flat_hand_mean, dtype=F64)
    theirs = smplx_mano(model, tmp_path, use_pca=use_pca, num_pca_comps=num_pca_comps, flat_hand_mean=flat_hand_mean)
    inputs = random_inputs(7, num_hand=num_pca_comps if use_pca else 45)
    out, ref = ours(**inputs), theirs(**inputs)
    assert (out.vertices - ref.vertices).abs().max() <= 1e-6
    assert (out.mano_joints - ref.joints).abs().max() <= 1e-6


def test_official_style_pickle_arrays_are_recovered(right_pickle, mano_arrays):
    model = load_mano(right_pickle)
    np.testing.assert_array_equal(model.shapedirs, mano_arrays["shapedirs"])  # chumpy Select over Ch
    np.testing.assert_array_equal(model.J_regressor, mano_arrays["J_regressor"])  # scipy CSC
    assert model.parents[0] == -1  # stored as 4294967295
    assert model.faces.dtype == np.int64 and not model.is_official_right_v1_2


def test_official_md5_is_reported(right_pickle, monkeypatch):
    import hashlib

    import manolayer.io

    monkeypatch.setattr(manolayer.io, "OFFICIAL_RIGHT_V1_2_MD5", hashlib.md5(right_pickle.read_bytes()).hexdigest())
    model = load_mano(right_pickle)
    assert model.is_official_right_v1_2
    assert "official MANO_RIGHT v1.2: yes" in model.describe()


# --------------------------------------------------------------------------- left hands


def test_left_pickle_gets_the_shapedirs_fix_once(right_pickle, left_pickle):
    right, left = load_mano(right_pickle), load_mano(left_pickle)
    np.testing.assert_allclose(left.shapedirs, mirror_model(right).shapedirs, atol=1e-15)
    unfixed = load_mano(left_pickle, fix_left_shapedirs=False)
    np.testing.assert_allclose(unfixed.shapedirs[:, 0], -left.shapedirs[:, 0])
    np.testing.assert_array_equal(unfixed.shapedirs[:, 1:], left.shapedirs[:, 1:])


def test_left_npz_is_not_fixed_again(left_pickle, tmp_path):
    from manolayer import save_mano_npz

    left = load_mano(left_pickle)
    reloaded = load_mano(save_mano_npz(tmp_path / "left.npz", left))
    np.testing.assert_array_equal(reloaded.shapedirs, left.shapedirs)


@pytest.mark.parametrize("source", ["random", "open_hand"])
def test_left_is_mirror_of_right(source, right_pickle):
    right_model = load_mano(right_pickle) if source == "random" else load_mano(None)
    left_model = mirror_model(right_model) if source == "random" else load_mano(None, side="left")
    right = ManoLayer(right_model, use_pca=False, flat_hand_mean=False, dtype=F64)
    left = ManoLayer(left_model, use_pca=False, flat_hand_mean=False, dtype=F64)
    inputs = random_inputs(4)
    mirror_pose = torch.tensor([1.0, -1.0, -1.0], dtype=F64)  # axis-angle (x, y, z) -> (x, -y, -z)
    reflect = torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    mirrored = dict(
        global_orient=inputs["global_orient"] * mirror_pose,
        hand_pose=(inputs["hand_pose"].view(4, 15, 3) * mirror_pose).view(4, 45),
        betas=inputs["betas"],
        transl=inputs["transl"] * reflect,
    )
    out_r, out_l = right(**inputs), left(**mirrored)
    torch.testing.assert_close(out_l.vertices, out_r.vertices * reflect, atol=1e-12, rtol=0)
    torch.testing.assert_close(out_l.joints, out_r.joints * reflect, atol=1e-12, rtol=0)


def test_open_hand_left_through_layer():
    layer = ManoLayer(side="left", use_pca=False)
    assert layer.side == "left" and layer.model.side == "left"
    assert "mirror" in layer.model.source


# --------------------------------------------------------------------------- properties


def test_zero_pose_and_shape_gives_the_template(right_pickle):
    model = load_mano(right_pickle)
    layer = ManoLayer(model, use_pca=False, flat_hand_mean=True, dtype=F64)
    out = layer(torch.zeros(2, 3, dtype=F64), torch.zeros(2, 45, dtype=F64), torch.zeros(2, 10, dtype=F64))
    torch.testing.assert_close(out.vertices, torch.as_tensor(model.v_template).expand(2, -1, -1), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.mano_joints[0], torch.as_tensor(model.rest_joints), atol=1e-12, rtol=0)


def test_default_layer_is_the_open_hand():
    layer = ManoLayer()
    assert "open hand" in layer.model.source and layer.side == "right"
    out = layer()
    assert out.vertices.shape == (1, layer.num_vertices, 3) and out.joints.shape == (1, 21, 3)


def test_batch_one_and_batch_n_agree(right_pickle):
    layer = ManoLayer(load_mano(right_pickle), use_pca=False, dtype=F64)
    inputs = random_inputs(5)
    batched = layer(**inputs)
    for i in range(5):
        single = layer(**{k: v[i : i + 1] for k, v in inputs.items()})
        torch.testing.assert_close(single.vertices[0], batched.vertices[i], atol=1e-12, rtol=0)


def test_fingertips_and_openpose_order(right_pickle):
    layer = ManoLayer(load_mano(right_pickle), use_pca=False, dtype=F64)
    out = layer(**random_inputs(2))
    torch.testing.assert_close(out.joints[:, [4, 8, 12, 16, 20]], out.vertices[:, [744, 320, 443, 554, 671]])
    torch.testing.assert_close(out.joints[:, [0, 1, 5, 9, 13, 17]], out.mano_joints[:, [0, 13, 1, 4, 10, 7]])
    transforms = out.global_transforms
    assert transforms.shape == (2, 16, 4, 4)
    torch.testing.assert_close(transforms[..., :3, 3], out.mano_joints)


def test_other_topologies_work(tmp_path):
    arrays = random_mano_arrays(num_vertices=123, seed=3)
    path = write_official_style_pickle(tmp_path / "MANO_RIGHT.pkl", arrays)
    with pytest.raises(ManoError, match="fingertip_ids"):
        ManoLayer(path)
    layer = ManoLayer(path, fingertip_ids=(1, 2, 3, 4, 5), use_pca=False, dtype=F64)
    theirs = smplx_mano(load_mano(path), tmp_path, use_pca=False, flat_hand_mean=False)
    inputs = random_inputs(3)
    assert (layer(**inputs).vertices - theirs(**inputs).vertices).abs().max() <= 1e-6


# --------------------------------------------------------------------------- pure functions vs references


def test_kinematic_levels_of_mano():
    assert kinematic_levels([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]) == [
        [0], [1, 4, 7, 10, 13], [2, 5, 8, 11, 14], [3, 6, 9, 12, 15],
    ]  # fmt: skip


@pytest.mark.parametrize("parents", [[-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], [-1, 0, 0, 1, 1, 2, 5, 3]])
def test_level_parallel_kinematics_and_skinning_match_references(parents):
    g = torch.Generator().manual_seed(1)
    batch, num_joints, num_v = 40, len(parents), 50  # more samples than one skinning chunk
    rotations = axis_angle_to_matrix(torch.randn(batch, num_joints, 3, generator=g, dtype=F64))
    joints = torch.randn(batch, num_joints, 3, generator=g, dtype=F64)
    fast = forward_kinematics(rotations, joints, KinematicPlan.from_parents(parents))
    slow = forward_kinematics_reference(rotations, joints, parents)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    weights = torch.rand(num_v, num_joints, generator=g, dtype=F64)
    weights /= weights.sum(1, keepdim=True)
    vertices = torch.randn(batch, num_v, 3, generator=g, dtype=F64, requires_grad=True)
    skinned = skin_vertices(vertices, weights, *fast, joints)
    reference = skin_vertices_reference(vertices, weights, *slow, joints)
    torch.testing.assert_close(skinned, reference)
    probe = torch.randn(skinned.shape, generator=g, dtype=F64)
    (grad,) = torch.autograd.grad((skinned * probe).sum(), vertices)
    (grad_reference,) = torch.autograd.grad((reference * probe).sum(), vertices)
    torch.testing.assert_close(grad, grad_reference)


def test_rotation_conversions_round_trip():
    g = torch.Generator().manual_seed(2)
    axis_angle = torch.randn(500, 3, generator=g, dtype=F64)
    axis_angle = axis_angle / axis_angle.norm(dim=-1, keepdim=True) * torch.rand(500, 1, generator=g, dtype=F64) * 3.1
    axis_angle[:3] = torch.tensor([[0.0, 0, 0], [1e-9, 0, 0], [0, 2e-5, -1e-5]], dtype=F64)
    matrix = axis_angle_to_matrix(axis_angle)
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(matrix @ matrix.transpose(-1, -2), eye.expand(500, 3, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close(matrix_to_axis_angle(matrix), axis_angle, atol=1e-9, rtol=0)
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(matrix)), matrix, atol=1e-12, rtol=0)
    # Rodrigues against the matrix exponential of the skew matrix
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    torch.testing.assert_close(matrix, torch.linalg.matrix_exp(skew), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_homogeneous_rodrigues_matches_the_reference(dtype):
    g = torch.Generator().manual_seed(3)
    axis_angle = (torch.randn(300, 3, generator=g, dtype=F64) * torch.logspace(-9, 0.5, 300, dtype=F64)[:, None]).to(dtype)
    axis_angle[0] = 0
    homogeneous = axis_angle_to_homogeneous(axis_angle, RodriguesConstants.create(dtype)).view(-1, 4, 4)
    reference = axis_angle_to_matrix(axis_angle)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(homogeneous[:, :3, :3], reference, atol=tolerance, rtol=0)
    assert (homogeneous[:, 3] == torch.tensor([0.0, 0, 0, 1], dtype=dtype)).all() and (homogeneous[:, :3, 3] == 0).all()
    assert (homogeneous[0, :3, :3] == torch.eye(3, dtype=dtype)).all()  # exactly identity at zero


@pytest.mark.parametrize("pose_format", ["rot6d", "rotmat"])
def test_rotation_formats_agree_with_axis_angle(pose_format, right_pickle):
    layer = ManoLayer(load_mano(right_pickle), use_pca=False, flat_hand_mean=True, dtype=F64)
    inputs = random_inputs(3)
    reference = layer(**inputs)
    root = axis_angle_to_matrix(inputs["global_orient"])
    hand = axis_angle_to_matrix(inputs["hand_pose"].view(3, 15, 3))
    if pose_format == "rot6d":
        root, hand = matrix_to_rot6d(root), matrix_to_rot6d(hand)
    out = layer(root, hand, inputs["betas"], inputs["transl"], pose_format=pose_format)
    torch.testing.assert_close(out.vertices, reference.vertices, atol=1e-12, rtol=0)


def test_gradcheck_float64(tmp_path):
    arrays = random_mano_arrays(num_vertices=40, seed=5)
    layer = ManoLayer(write_official_style_pickle(tmp_path / "MANO_RIGHT.pkl", arrays), fingertip_ids=(0, 1, 2, 3, 4),
                      use_pca=True, num_pca_comps=5, dtype=F64)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, n, generator=g, dtype=F64, requires_grad=True) for n in (3, 5, 10, 3)]
    assert torch.autograd.gradcheck(lambda *x: layer(*x).joints, inputs)
    rot6d = torch.randn(2, 16, 6, generator=g, dtype=F64, requires_grad=True)
    flat = ManoLayer(layer.model, fingertip_ids=(0, 1, 2, 3, 4), use_pca=False, dtype=F64)
    assert torch.autograd.gradcheck(lambda r: flat(r[:, :1], r[:, 1:], pose_format="rot6d").vertices, [rot6d])


def test_dtype_and_device_follow_inputs(device, right_pickle):
    layer = ManoLayer(load_mano(right_pickle), use_pca=False).to(device)
    for dtype in (torch.float32, F64):
        out = layer(**{k: v.to(device=device, dtype=dtype) for k, v in random_inputs(2).items()})
        assert out.vertices.dtype == dtype and out.vertices.device.type == device.type


# --------------------------------------------------------------------------- bad input to the layer


def test_bad_pose_inputs_name_the_problem(right_pickle):
    layer = ManoLayer(load_mano(right_pickle), use_pca=True, num_pca_comps=6)
    with pytest.raises(PoseInputError, match=r"hand_pose has shape \(2, 45\); expected \(2, 6\)"):
        layer(torch.zeros(2, 3), torch.zeros(2, 45))
    with pytest.raises(PoseInputError, match=r"global_orient has shape \(2, 3, 3\); expected \(2, 3\) or \(2, 1, 3\)"):
        layer(torch.zeros(2, 3, 3), torch.zeros(2, 6))
    with pytest.raises(PoseInputError, match="betas has shape"):
        layer(torch.zeros(2, 3), torch.zeros(2, 6), torch.zeros(2, 11))
    with pytest.raises(PoseInputError, match="hand_pose contains NaN"):
        layer(torch.zeros(2, 3), torch.full((2, 6), float("nan")))
    with pytest.raises(PoseInputError, match="PCA does not apply"):
        layer(torch.zeros(2, 6), pose_format="rot6d")
    with pytest.raises(PoseInputError, match="share one dtype"):
        layer(torch.zeros(2, 3), torch.zeros(2, 6, dtype=F64))
    with pytest.raises(PoseInputError, match="floating point"):
        layer(torch.zeros(2, 3, dtype=torch.long))


def test_checkpoints_never_carry_the_model_arrays(right_pickle):
    assert ManoLayer(load_mano(right_pickle)).state_dict() == {}


def test_import_is_light():
    code = "import sys, manolayer, meshrec; print(any(m.split('.')[0] in ('pytorch3d', 'moderngl', 'matplotlib') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_model_replace_is_validated(right_pickle):
    model = load_mano(right_pickle)
    with pytest.raises(ManoError, match=r"'weights' has shape \(778, 15\)"):
        replace(model, weights=model.weights[:, :15])

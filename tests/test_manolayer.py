"""ManoLayer: equivalence with smplx, properties, rotation formats, gradients, bad input."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import manolayer.lbs
from manolayer import ManoLayer, ManoModel, PoseInputError, load_mano, mirror_model
from manolayer.errors import ManoError
from manolayer.lbs import (
    KinematicPlan,
    QuaternionConstants,
    forward_kinematics,
    forward_kinematics_reference,
    kinematic_levels,
    skin_homogeneous,
    skin_vertices,
    skin_vertices_reference,
    turns_to_rotation_offset,
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
def test_level_parallel_kinematics_and_skinning_match_references(parents, monkeypatch):
    monkeypatch.setattr(manolayer.lbs, "_SKIN_CHUNK", 16)
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


@pytest.mark.parametrize("batch", [1, 2, 7])  # one sample, one chunk, several chunks
def test_skinning_adds_the_translation(batch, monkeypatch):
    monkeypatch.setattr(manolayer.lbs, "_SKIN_CHUNK", 3)
    g = torch.Generator().manual_seed(6)
    num_joints, num_v = 16, 30
    vertices = torch.randn(batch, 3, num_v, generator=g, dtype=F64)
    weights = torch.rand(num_joints, num_v, generator=g, dtype=F64)  # rows need not sum to 1
    transforms = torch.randn(batch, num_joints, 4, 4, generator=g, dtype=F64)
    rest_inverse = torch.randn(batch, num_joints, 4, 4, generator=g, dtype=F64)
    translation = torch.randn(batch, 3, generator=g, dtype=F64)
    moved = skin_homogeneous(vertices, weights, transforms, rest_inverse, translation)
    still = skin_homogeneous(vertices, weights, transforms, rest_inverse)
    assert moved.shape == (batch, num_v, 3) and moved.is_contiguous() and still.is_contiguous()
    torch.testing.assert_close(moved, still + translation.unsqueeze(1), atol=1e-12, rtol=0)
    relative = (transforms @ rest_inverse)[..., :3, :]  # (B, J, 3, 4)
    homogeneous = torch.nn.functional.pad(vertices, (0, 0, 0, 1), value=1.0)  # (B, 4, V)
    reference = torch.einsum("jv,bjck,bkv->bvc", weights, relative, homogeneous)
    torch.testing.assert_close(still, reference, atol=1e-12, rtol=0)


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
def test_quaternion_rodrigues_matches_the_reference(dtype):
    g = torch.Generator().manual_seed(3)
    axis_angle = torch.randn(300, 3, generator=g, dtype=F64) * torch.logspace(-9, 0.5, 300, dtype=F64)[:, None]
    axis_angle[0] = 0
    axis_angle[1] = torch.tensor([torch.pi, 0, 0])  # half-angle pi/2: the sinc of 1/2 - s is at 0
    axis_angle[2] = torch.tensor([0, 0, 2 * torch.pi - 1e-3])  # past pi: cos(half-angle) < 0
    padded_turns = torch.nn.functional.pad(axis_angle / (2 * torch.pi), (1, 0)).to(dtype)
    offset = turns_to_rotation_offset(padded_turns, QuaternionConstants.create(dtype)).view(-1, 4, 4)
    reference = axis_angle_to_matrix(axis_angle) - torch.eye(3, dtype=F64)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(offset[:, :3, :3].double(), reference, atol=tolerance, rtol=0)
    assert (offset[:, 3] == 0).all() and (offset[:, :, 3] == 0).all()
    assert (offset[0] == 0).all()  # exactly identity at zero


def test_quaternion_rodrigues_gradients():
    g = torch.Generator().manual_seed(4)
    turns = torch.nn.functional.pad(torch.randn(6, 3, generator=g, dtype=F64), (1, 0))
    turns[0, 1:] = 0  # at zero, where the norm has no derivative of its own
    turns[1, 1:] = torch.tensor([0.5, 0, 0])  # half-angle pi/2
    turns.requires_grad_(True)
    constants = QuaternionConstants.create(F64)
    assert torch.autograd.gradcheck(lambda t: turns_to_rotation_offset(t, constants), [turns])
    # at zero the derivative of R - I is the skew matrix's: d(R - I)/dw_x = [e_x]x
    (grad,) = torch.autograd.grad(turns_to_rotation_offset(turns, constants)[0, 9], turns)  # entry (2, 1): +w_x
    torch.testing.assert_close(grad[0], torch.tensor([0, 2 * torch.pi, 0, 0], dtype=F64))


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


@pytest.mark.parametrize("pose_format", ["axis_angle", "rot6d", "rotmat"])
@pytest.mark.parametrize("flat_hand_mean", [False, True])
def test_missing_inputs_are_the_defaults(pose_format, flat_hand_mean, right_pickle):
    """No pose means identity root and the mean (or flat) hand; no betas or transl means zeros."""
    layer = ManoLayer(load_mano(right_pickle), use_pca=False, flat_hand_mean=flat_hand_mean, dtype=F64)
    batch = 3
    zeros = {n: torch.zeros(batch, n, dtype=F64) for n in (3, 10, 45)}
    reference = layer(zeros[3], zeros[45], zeros[10], zeros[3])  # axis-angle: zero hand pose = the mean
    identity = {"axis_angle": zeros[3], "rot6d": torch.tensor([[1.0, 0, 0, 0, 1, 0]] * batch, dtype=F64),
                "rotmat": torch.eye(3, dtype=F64).expand(batch, 3, 3)}[pose_format]  # fmt: skip
    out = layer(betas=zeros[10], pose_format=pose_format)  # the batch size comes from the inputs given
    torch.testing.assert_close(out.vertices, reference.vertices, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.joints, reference.joints, atol=1e-12, rtol=0)
    out = layer(global_orient=identity, pose_format=pose_format)
    torch.testing.assert_close(out.vertices, reference.vertices, atol=1e-12, rtol=0)
    assert layer().vertices.shape == (1, 778, 3)


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
    for position, name in enumerate(["global_orient", "hand_pose", "betas", "transl"]):
        inputs = [torch.zeros(2, 3), torch.zeros(2, 6), torch.zeros(2, 10), torch.zeros(2, 3)]
        inputs[position][1, -1] = float("inf") if position % 2 else float("nan")
        with pytest.raises(PoseInputError, match=f"{name} contains NaN or Inf"):
            layer(*inputs)
    with pytest.raises(PoseInputError, match="overflow"):
        layer(torch.zeros(2, 3), torch.zeros(2, 6), torch.full((2, 10), 3e38))
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

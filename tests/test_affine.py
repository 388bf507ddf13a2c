"""The output grid's voxel -> world affine (synthgen.ops.output_affine, SynthGenerator.output_affine)."""
import numpy as np
import pytest
import torch

import synthgen
from synthgen.config import GeneratorConfig
from synthgen.ops import output_affine

from conftest import TO_TARGET, agreement, map_affine, phantom_labels

NO_ELASTIC = {"elastic": {"max_std": 0.0}}
RIGID_FREE = {"affine": {"rotation": 0.0, "shear": 0.0, "zoom": 0.0, "translation": 0.0}, **NO_ELASTIC}


def test_hand_made_translation_and_flips():
    # identity matrix, integer centre, odd crop: output voxel o samples input voxel centre + (q - h) exactly, with
    # q the unflipped index (S - 1 - o on a flipped axis); written out voxel by voxel, not as a matrix product
    crop, center, flips = (7, 9, 5), (14.0, 17.0, 15.0), (True, False, True)
    aff = map_affine()
    got = output_affine(torch.eye(3)[None], torch.tensor([center]), torch.tensor([flips]), crop, aff)[0].numpy()
    for o in [(0, 0, 0), (6, 8, 4), (3, 1, 2), (1, 7, 0)]:
        q = [s - 1 - v if f else v for v, s, f in zip(o, crop, flips)]
        voxel = [c + qi - (s - 1) / 2 for c, qi, s in zip(center, q, crop)]
        assert np.allclose(got @ np.append(o, 1.0), aff @ np.append(voxel, 1.0), atol=1e-9)
    no_map = output_affine(torch.eye(3)[None], torch.tensor([center]), None, crop)[0].numpy()
    assert np.allclose(no_map[:3, :3], np.eye(3)) and np.allclose(no_map[:3, 3], np.array(center) - [3, 4, 2])


def test_generator_target_is_the_map_at_the_affines_voxels():
    # no rotation/zoom/elastic: the target equals the map read at the voxels the affine names, flips included
    tissue = phantom_labels()
    gen = synthgen.SynthGenerator(GeneratorConfig.from_dict({"crop": (11, 13, 9), **RIGID_FREE}))
    for index in range(4):
        _, target, params = gen(tissue, seed=3, index=index, return_params=True)
        params.center = params.center.round()
        _, target = gen(tissue, params=params)
        vox2vox = gen.output_affine(params)[0].numpy()            # identity map affine: output -> input voxels
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in (11, 13, 9)], indexing="ij"), -1).reshape(-1, 3)
        src = np.rint(ijk @ vox2vox[:3, :3].T + vox2vox[:3, 3]).astype(int)
        expect = TO_TARGET[tissue[0, 0].numpy()[tuple(src.T)]].reshape(11, 13, 9)
        assert np.array_equal(target[0].numpy(), expect), f"sample {index}, flips {params.flip.tolist()}"


def test_target_resampled_by_nibabel_agrees_with_the_map_without_elastic():
    tissue = phantom_labels()
    aff = map_affine()
    gen = synthgen.SynthGenerator(GeneratorConfig.from_dict({"crop": (20, 24, 18), **NO_ELASTIC}))
    _, target, params = gen(tissue, seed=1, index=0, batch_size=6, return_params=True)
    affines = gen.output_affine(params, aff).numpy()
    assert bool(params.flip.any()) and not bool(params.flip.all())      # both kinds of axes exercised
    for b in range(6):
        assert agreement(target[b].numpy(), affines[b], tissue[0, 0].numpy(), aff) >= 0.99, b
    # the map's own affine (what a MetaTensor used to carry) puts the crop elsewhere
    assert agreement(target[0].numpy(), aff, tissue[0, 0].numpy(), aff) < 0.9


def test_metatensor_input_gives_plain_tensors():
    monai_data = pytest.importorskip("monai.data")
    tissue = monai_data.MetaTensor(phantom_labels(), affine=torch.as_tensor(map_affine()))
    image, target = synthgen.SynthGenerator(GeneratorConfig(crop=(8, 8, 8)))(tissue, seed=0)
    assert type(image) is torch.Tensor and type(target) is torch.Tensor


def test_output_affine_errors():
    eye, c, f = torch.eye(3)[None], torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"`matrix` must be \(B, 3, 3\)"):
        output_affine(torch.eye(3), c, f, (4, 4, 4))
    with pytest.raises(ValueError, match=r"`center` must be \(1, 3\)"):
        output_affine(eye, torch.zeros(3), f, (4, 4, 4))
    with pytest.raises(ValueError, match="`out_shape` must be 3 sizes"):
        output_affine(eye, c, f, (4, 4))
    with pytest.raises(ValueError, match=r"`flips` must be \(1, 3\)"):
        output_affine(eye, c, f[0], (4, 4, 4))
    with pytest.raises(ValueError, match=r"`affine` must be \(4, 4\)"):
        output_affine(eye, c, f, (4, 4, 4), np.eye(3))


@pytest.mark.gpu
def test_fast_path_targets_sit_where_the_affine_says():
    # the fused kernels do their own warp and flips: the same affine must place their targets
    tissue = phantom_labels()
    gen = synthgen.SynthGenerator(GeneratorConfig.from_dict({"crop": (20, 24, 18), **NO_ELASTIC}))
    _, target, params = gen(tissue.cuda(), seed=1, index=0, batch_size=6, return_params=True)
    affines = gen.output_affine(params, map_affine()).numpy()
    for b in range(6):
        assert agreement(target[b].cpu().numpy(), affines[b], tissue[0, 0].numpy(), map_affine()) >= 0.99, b

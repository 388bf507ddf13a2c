"""TorchIO transforms: a synthetic image and target from a subject's tissue label map.

    import torchio as tio
    from synthgen.torchio import SynthFromLabels
    subjects = tio.SubjectsDataset([tio.Subject(label=tio.LabelMap("sub-01_tissue.nii.gz"))],
                                   transform=SynthFromLabels())
    loader = tio.SubjectsLoader(subjects, batch_size=2, num_workers=2)
    # batch["image"]["data"] (2, 1, *crop) float32, batch["label"]["data"] (2, 1, *crop) uint8

:class:`SynthFromLabels` is a ``RandomTransform``: it draws a seed from torch's RNG (as TorchIO's own random
transforms do, so ``torch.manual_seed`` reproduces a run and every DataLoader worker gets its own stream) and
applies :class:`SynthSample` with that seed, which is what ``subject.history`` records and
``subject.get_composed_history()`` replays exactly. The outputs are a ``ScalarImage`` and a ``LabelMap`` whose
affine is the output grid's (exact for crop, rotation, shear, zoom and flips; the elastic deformation is a
displacement of a few mm about it, :func:`synthgen.ops.output_affine`).

Needs TorchIO: ``pip install 'synthgen[torchio]'``.
"""
from __future__ import annotations

from .generator import SynthGenerator
from .interop import as_tissue, require, synth_one

tio = require("torchio", "torchio")


class SynthSample(tio.Transform):
    """One synthetic sample, stream ``seed`` index ``index``, from the tissue map ``subject[label_key]``.

    Args:
        seed, index: the sample (see :class:`synthgen.SynthGenerator`).
        label_key: the subject's tissue map (``LabelMap`` of labels 0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ other
            tissue, or an image of 2+ probability channels).
        image_key: where the ``ScalarImage`` ``(1, *crop)`` goes.
        target_key: where the target ``LabelMap`` ``(1, *crop)`` uint8 goes (default: ``label_key``, replacing it).
        generator: a :class:`synthgen.SynthGenerator`, or
        config, lesions: the config and lesion source to build one from.
        device: generate there (default: the CPU, where TorchIO keeps images).
        **kwargs: TorchIO ``Transform`` arguments (``p``, ``copy``, ...).
    """

    def __init__(self, seed: int, index: int = 0, label_key: str = "label", image_key: str = "image",
                 target_key: str | None = None, generator: SynthGenerator | None = None, config=None, lesions=None,
                 device=None, **kwargs):
        super().__init__(**kwargs)
        if generator is not None and (config is not None or lesions is not None):
            raise ValueError("`generator` already holds a config and lesions: pass either it or `config`/`lesions`")
        self.seed, self.index = int(seed), int(index)
        self.label_key, self.image_key = label_key, image_key
        self.target_key = label_key if target_key is None else target_key
        self.generator = generator or SynthGenerator(config, lesions=lesions)
        self.device = device
        self.args_names = ["seed", "index", "label_key", "image_key", "target_key", "generator", "device"]

    def apply_transform(self, subject):
        if self.label_key not in subject:
            raise KeyError(f"SynthSample: the subject has no image {self.label_key!r} (images: "
                           f"{sorted(subject.get_images_dict(intensity_only=False))})")
        src = subject[self.label_key]
        tissue = as_tissue(src.data, self.label_key, self.generator.config.labels.num_labels)
        image, target, affine = synth_one(self.generator, tissue, self.seed, self.index, affine=src.affine,
                                          device=self.device)
        affine = affine.numpy()
        subject.add_image(tio.ScalarImage(tensor=image.cpu(), affine=affine), self.image_key)
        subject.add_image(tio.LabelMap(tensor=target.cpu(), affine=affine.copy()), self.target_key)
        return subject


class SynthFromLabels(tio.transforms.augmentation.RandomTransform):
    """Random synthetic image and target from a subject's tissue label map (paper section 2).

    Args: as :class:`SynthSample` without ``seed`` and ``index``, which each call draws from torch's RNG.
    """

    def __init__(self, label_key: str = "label", image_key: str = "image", target_key: str | None = None,
                 generator: SynthGenerator | None = None, config=None, lesions=None, device=None, **kwargs):
        super().__init__(**kwargs)
        if generator is not None and (config is not None or lesions is not None):
            raise ValueError("`generator` already holds a config and lesions: pass either it or `config`/`lesions`")
        self.label_key, self.image_key, self.target_key = label_key, image_key, target_key
        self.generator = generator or SynthGenerator(config, lesions=lesions)
        self.device = device

    def apply_transform(self, subject):
        transform = SynthSample(self._get_random_seed(), 0, self.label_key, self.image_key, self.target_key,
                                generator=self.generator, device=self.device, **self._get_base_args())
        return transform(subject)


__all__ = ["SynthFromLabels", "SynthSample"]

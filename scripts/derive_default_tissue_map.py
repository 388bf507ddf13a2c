"""Derive the bundled default tissue map from the MNI152 2009a template that nilearn ships.

Run once (``python scripts/derive_default_tissue_map.py [--out PATH] [--preview PNG]``); the result is
committed as ``synthgen/data/default/mni152_2009a_tissue_labels.nii.gz``. Deterministic: same nilearn
files in, same bytes out (the gzip header carries no time stamp).

Inputs, all uint8 on the ICBM 2009a Nonlinear Symmetric 1 mm grid (197x233x189, RAS), in
``nilearn/datasets/data/``: GM and WM probabilities (x255) and the T1-weighted template. nilearn's
copy of the T1 is already masked to the intracranial volume (brain + CSF, about 1.9 L, zero
elsewhere), so it carries no scalp or skull; class 5 outside that mask is therefore synthesised.

Labels (the project's tissue-map convention): 0 background, 1 GM, 2 WM, 3 GM/WM partial volume, 4 CSF, and
non-brain tissue in four classes, each drawing its own Gaussian: 5 bright non-brain tissue inside the intracranial
mask (dura, sinuses, vessels), 6 / 7 / 8 the inner / middle / outer layer of the head outside it.

Recipe:
1. Intracranial mask ``ic``: T1 > 0, closed (radius-2 ball), holes filled, largest component.
2. Class intensities of the T1 measured on the template itself: median over pure GM (pg > 0.9) and
   over pure CSF (in ``ic`` with pg + pw < 0.1); the CSF threshold ``t_csf`` is their midpoint.
3. Inside ``ic``, in this order of precedence:
   - PV (3) where pg >= 0.4 and pw >= 0.4: both tissues substantial, a thin band (about 1-2 voxels)
     along the GM/WM boundary. 0.25 would label 0.4 L as PV because the averaged template is blurry;
   - CSF (4) where T1 < t_csf and neither pg nor pw reaches 0.5 (ventricles, sulcal and cisternal CSF);
   - GM (1) / WM (2) where pg + pw >= 0.5, whichever probability is larger;
   - the rest (bright T1 but little GM/WM: dura, sinuses, vessels, optic nerves) -> 5;
     dark rest -> CSF (4).
4. Outside ``ic`` (nilearn's T1 is masked there, so no intensity can be clustered: the head is built from
   measured depths), by Euclidean distance ``d`` from ``ic``: 6 for d <= 5.5 mm, 7 for 5.5 < d <= 9 mm, 8 for
   9 < d <= ``SHELL_MM`` = 11 mm, 0 beyond. Measured on SynthSeg's 20 whole-head training label maps
   (BBillot/SynthSeg, Apache-2.0) over the cranial vault (``--measure-layers DIR``): the non-brain label holding
   most voxels at each 1 mm of depth changes from 515 to 507 at a median 5.5 mm (3-8 mm over the maps) and from
   507 to 511 at 9 mm (8-11; three maps have no 511 layer); air takes over at 12 mm, and the median scalp +
   skull thickness of maps 01, 07, 13 is 12.1, 11.7, 10.1 mm (median 11). The face, the eyes and the neck are
   not modelled: the template has no intensities outside ``ic`` to find them by.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from synthgen.io import atomic_path, save_png  # noqa: E402
DEFAULT_OUT = REPO / "synthgen" / "data" / "default" / "mni152_2009a_tissue_labels.nii.gz"
TEMPLATE_FILES = {
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
}
PV_MIN_PROB = 0.4  # both GM and WM at least this -> partial volume
TISSUE_MIN_PROB = 0.5  # GM or WM at least this -> never CSF
SHELL_MM = 11.0  # scalp + skull thickness outside the intracranial mask
LAYERS_MM = ((5.5, 6), (9.0, 7), (SHELL_MM, 8))  # (outer depth mm, label) of the head layers outside ``ic``
LABEL_NAMES = {0: "background", 1: "GM", 2: "WM", 3: "PV", 4: "CSF", 5: "non-brain (inside ic)",
               6: "head inner layer", 7: "head middle layer", 8: "head outer layer"}


def template_dir() -> Path:
    """Return nilearn's bundled data folder holding the MNI152 2009a files.

    Raises:
        FileNotFoundError: if nilearn is installed but a template file is missing.
    """
    import nilearn  # local import: only this script needs nilearn

    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    for name in TEMPLATE_FILES.values():
        if not (folder / name).is_file():
            raise FileNotFoundError(f"MNI152 2009a template file not found: {folder / name}")
    return folder


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes)))


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2


def derive_labels(gm: np.ndarray, wm: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, dict]:
    """Hard tissue labels from the template's GM/WM probabilities and T1.

    Args:
        gm: GM probability x255, uint8 (X, Y, Z).
        wm: WM probability x255, uint8, same shape.
        t1: T1-weighted template, uint8, same shape, zero outside the intracranial volume.

    Returns:
        (labels uint8 (X, Y, Z) in {0..8}, dict of the measured intensities and threshold).
    """
    pg = gm.astype(np.float32) / 255.0
    pw = wm.astype(np.float32) / 255.0
    t1f = t1.astype(np.float32)

    ic = ndi.binary_closing(t1 > 0, structure=_ball(2), border_value=0)
    ic = _largest_component(ndi.binary_fill_holes(ic | (t1 > 0)))

    mu_gm = float(np.median(t1f[pg > 0.9]))
    mu_csf = float(np.median(t1f[ic & (pg + pw < 0.1)]))
    t_csf = 0.5 * (mu_gm + mu_csf)

    labels = np.zeros(t1.shape, np.uint8)
    dist = ndi.distance_transform_edt(~ic)
    inner = 0.0
    for outer, label in LAYERS_MM:
        labels[(~ic) & (dist > inner) & (dist <= outer)] = label
        inner = outer

    pv = (pg >= PV_MIN_PROB) & (pw >= PV_MIN_PROB)
    csf = (t1f < t_csf) & (pg < TISSUE_MIN_PROB) & (pw < TISSUE_MIN_PROB) & ~pv
    tissue = (pg + pw >= 0.5) & ~pv & ~csf
    rest = ~(pv | csf | tissue)
    labels[ic & rest] = np.where(t1f[ic & rest] < t_csf, 4, 5)
    labels[ic & tissue] = np.where(pg[ic & tissue] >= pw[ic & tissue], 1, 2)
    labels[ic & csf] = 4
    labels[ic & pv] = 3
    return labels, {"mu_gm": mu_gm, "mu_csf": mu_csf, "t_csf": t_csf}


def class_volumes_ml(labels: np.ndarray, voxel_ml: float = 1e-3) -> dict[str, float]:
    """Volume of each label in mL (1 mm voxels by default)."""
    counts = np.bincount(labels.ravel(), minlength=len(LABEL_NAMES))
    return {LABEL_NAMES[k]: float(counts[k]) * voxel_ml for k in range(len(LABEL_NAMES))}


def nifti_bytes(labels: np.ndarray, affine: np.ndarray) -> bytes:
    """Serialise a uint8 label map to deterministic gzip-compressed NIfTI-1 bytes."""
    img = nib.Nifti1Image(labels.astype(np.uint8), affine.astype(np.float64))
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=4)  # 4 = MNI152
    img.header.set_sform(affine, code=4)
    img.header["descrip"] = b"synthgen tissue labels from MNI152 2009a sym"
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(raw)
    return buf.getvalue()


def derive(folder: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load the template from nilearn's data folder and derive the label map.

    Returns:
        (labels uint8 (197, 233, 189), affine float64 (4, 4), info dict).

    Raises:
        ValueError: if the template files do not share one grid.
    """
    folder = template_dir() if folder is None else Path(folder)
    imgs = {k: nib.load(folder / v) for k, v in TEMPLATE_FILES.items()}
    ref = imgs["t1"]
    for k, img in imgs.items():
        if img.shape != ref.shape or not np.allclose(img.affine, ref.affine):
            raise ValueError(
                f"`{folder / TEMPLATE_FILES[k]}` must share the T1 grid {ref.shape}, got {img.shape}"
            )
    arr = {k: np.asanyarray(img.dataobj).astype(np.uint8) for k, img in imgs.items()}
    labels, info = derive_labels(arr["gm"], arr["wm"], arr["t1"])
    return labels, np.asarray(ref.affine, np.float64), info


def write_preview(labels: np.ndarray, t1: np.ndarray | None, path: Path) -> None:
    """Save sagittal, coronal and axial slices (labels coloured; the T1 above them when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["black", "royalblue", "lightskyblue", "limegreen", "orange", "saddlebrown",
                           "lightgrey", "khaki", "peru"])
    # through the ventricles, the insula and the cerebellum/temporal lobes (grid indices)
    cuts = [
        ("sagittal x=123", lambda v: v[123].T),
        ("coronal y=126", lambda v: v[:, 126].T),
        ("axial z=80", lambda v: v[:, :, 80].T),
        ("axial z=45", lambda v: v[:, :, 45].T),
    ]
    rows = [labels] if t1 is None else [t1, labels]
    fig, axes = plt.subplots(len(rows), len(cuts), figsize=(5 * len(cuts), 5.5 * len(rows)), squeeze=False)
    for r, vol in enumerate(rows):
        is_label = vol is labels
        for ax, (name, cut) in zip(axes[r], cuts):
            kw = dict(cmap=cmap, vmin=0, vmax=len(LABEL_NAMES) - 1) if is_label else dict(cmap="gray")
            ax.imshow(cut(vol), origin="lower", interpolation="nearest", **kw)
            ax.set_title(name)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(len(LABEL_NAMES))]
    fig.legend(handles, [LABEL_NAMES[k] for k in range(len(LABEL_NAMES))], loc="lower center", ncol=5)
    save_png(fig, path, dpi=70, bbox_inches="tight")


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path, ".tmp") as tmp:
        Path(tmp).write_bytes(data)


def layer_depths(labels: np.ndarray, vault_mm: float = 20.0, depth_mm: int = 16) -> list[tuple[int, dict]]:
    """The non-brain labels of a whole-head FreeSurfer/SynthSeg label map (values >= 500; RAS, 1 mm) by depth over
    the cranial vault: for each 1 mm of distance from the intracranial mask (labels 1..499, holes filled), only
    voxels more than ``vault_mm`` above its centroid, the share of each label (``--measure-layers``)."""
    ic = ndi.binary_fill_holes((labels > 0) & (labels < 500))
    dist = ndi.distance_transform_edt(~ic)
    above = np.arange(labels.shape[2])[None, None, :] > np.argwhere(ic)[:, 2].mean() + vault_mm
    rows = []
    for d in range(depth_mm):
        values, counts = np.unique(labels[above & ~ic & (dist > d) & (dist <= d + 1)], return_counts=True)
        rows.append((d, {int(v): round(float(c) / counts.sum(), 2) for v, c in zip(values, counts)}))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .nii.gz")
    parser.add_argument("--preview", type=Path, default=None, help="optional PNG of mid slices")
    parser.add_argument("--measure-layers", type=Path, default=None, metavar="DIR",
                        help="print the head layers' depths in SynthSeg's training_seg_*.nii.gz maps of DIR and stop")
    args = parser.parse_args(argv)
    if args.measure_layers is not None:
        for path in sorted(args.measure_layers.glob("training_seg_*.nii.gz")):
            lab = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj).astype(np.int32)
            print(path.name)
            for d, shares in layer_depths(lab):
                top = sorted(shares.items(), key=lambda kv: -kv[1])[:3]
                print(f"  {d:2d}-{d + 1:2d} mm: " + "  ".join(f"{v}: {c:.2f}" for v, c in top))
        return

    labels, affine, info = derive()
    _atomic_write(args.out, nifti_bytes(labels, affine))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    print(f"T1 medians: GM {info['mu_gm']:.0f}, CSF {info['mu_csf']:.0f}; CSF threshold {info['t_csf']:.1f}")
    for name, ml in class_volumes_ml(labels).items():
        print(f"  {name:16s} {ml:9.1f} mL")
    if args.preview is not None:
        t1 = np.asanyarray(nib.load(template_dir() / TEMPLATE_FILES["t1"]).dataobj)
        write_preview(labels, t1, args.preview)
        print(f"preview {args.preview}")


if __name__ == "__main__":
    main()

"""The reference generator with given texture and noise volumes, to compare fast paths with it exactly.

Kept free of Triton imports: the interpreter tests and the compiled GPU tests both use it.
"""

from synthgen.reference import generate_ref, label_tables


def reference_with_noise(cfg, tissue, params, texture, normals, lesion=None):
    """The reference pipeline (:func:`synthgen.reference.generate_ref`) with the given texture and noise volumes."""
    B = len(params)
    tissue = tissue.expand(B, *tissue.shape[1:]) if tissue.shape[0] == 1 else tissue
    return generate_ref(cfg, tissue, params, lesion, label_tables(cfg, tissue.device), texture=texture,
                        noise=normals)

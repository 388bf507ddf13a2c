"""The segmentation models that ship inside the package (``synthgen/models``), loaded by name, no download.

``synthgen/models/models.json`` lists each model: its weights file (a checkpoint that
:func:`synthgen.segment.load_checkpoint_model` reads, without optimiser state), the file's SHA-256 and its card
(``<name>.md``: recipe, training, scores on real scans, limits). :func:`load_bundled_model` checks the digest
before it loads, so a damaged or replaced file is refused by name rather than segmenting with other weights.
``predict_volume(None, ...)``, ``predict_files(None, ...)`` and ``synthgen-predict`` without ``--checkpoint``
use :data:`DEFAULT_MODEL`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
MANIFEST = MODELS_DIR / "models.json"
DEFAULT_MODEL = "synthstroke-cpu-2mm"


def bundled_models() -> dict:
    """``{name: {"file", "sha256", "card", ...}}`` of the models in the package (empty when none ships)."""
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text())


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_path(name: str | None = None) -> Path:
    """The checked weights file of bundled model ``name`` (default :data:`DEFAULT_MODEL`).

    Raises:
        ValueError: an unknown name, or a file whose SHA-256 is not the manifest's (damaged or replaced).
        FileNotFoundError: the manifest names a file that the installation lacks.
    """
    name = name or DEFAULT_MODEL
    models = bundled_models()
    if name not in models:
        raise ValueError(f"`{name}` is not a bundled model; bundled: {sorted(models) or 'none'} "
                         f"(or pass a checkpoint file)")
    entry = models[name]
    path = MODELS_DIR / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled model {name!r} is missing from this installation (reinstall "
                                "synthgen)")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"{path}: bundled model {name!r} is damaged or was replaced: SHA-256 {digest[:12]}..., "
                         f"the manifest says {entry['sha256'][:12]}... (reinstall synthgen)")
    return path


def is_bundled_name(checkpoint) -> bool:
    """True for a bundled model's name that is not also a file here (a path always wins)."""
    return isinstance(checkpoint, str) and checkpoint in bundled_models() and not Path(checkpoint).exists()


def load_bundled_model(name: str | None = None, map_location="cpu"):
    """``(model, config)`` of bundled model ``name`` (default :data:`DEFAULT_MODEL`), in eval mode."""
    from .model import load_checkpoint_model
    return load_checkpoint_model(bundled_path(name), map_location=map_location)


def model_card(name: str | None = None) -> str:
    """The card (markdown) of bundled model ``name``."""
    name = name or DEFAULT_MODEL
    bundled_path(name)
    return (MODELS_DIR / bundled_models()[name]["card"]).read_text()

"""Reproducible train/validation splits that keep every subject (and so every lesion) on one side.

A subject's side depends only on ``(seed, subject id)``, through a stable hash (SHA-256), never on the
list it comes in: the same subject goes to the same side in the tissue-map list, the lesion list and the
real-scan list, so a lesion pasted in training never comes from a validation subject's scan.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from synthgen.data.check import MASK_TOKENS, SCAN_SUFFIXES
from synthgen.io import nifti_stem

# tried in order; the first that matches gives the subject id
SUBJECT_PATTERNS = (
    r"sub-([A-Za-z0-9]+)",          # BIDS (ATLAS 2.0 sub-r001s001, SOOP bwsrsub-1000)
    r"(OAS[0-9]+)",                 # OASIS-3 OAS30001_MR_d0129: sessions share the subject
    r"(?:^|_)(?:subject|subj|patient|case)[-_]?([A-Za-z0-9]+)",   # Subject_001, case-12, patient7
)


def subject_id(name, pattern: str | None = None) -> str:
    """Subject id parsed from a file name (or path).

    Args:
        pattern: a regular expression with one group, tried first (``re.search`` on the file name).

    Returns:
        The first match of ``pattern`` or of :data:`SUBJECT_PATTERNS`; otherwise the name without
        extension, session (``ses-*``), modality and mask tokens (``case7_T1w`` -> ``case7``).

    Raises:
        ValueError: ``pattern`` has no group, or it does not match ``name``.
    """
    stem = nifti_stem(Path(str(name)).name)
    if pattern is not None:
        rx = re.compile(pattern)
        if rx.groups < 1:
            raise ValueError(f"`pattern` must have one group (the subject id), got {pattern!r}")
        m = rx.search(stem)
        if m is None:
            raise ValueError(f"`pattern` {pattern!r} does not match the file name {stem!r}")
        return m.group(1)
    for p in SUBJECT_PATTERNS:
        m = re.search(p, stem, flags=re.IGNORECASE)
        if m:
            return m.group(1)
    tokens = [t for t in stem.split("_") if t and not t.lower().startswith(("ses-", "space-", "desc-", "label-",
                                                                               "run-", "acq-"))
              and t.lower() not in SCAN_SUFFIXES and not any(t.lower().endswith(m) for m in MASK_TOKENS)]
    return "_".join(tokens) or stem


def _unit_hash(seed: int, subject: str) -> float:
    digest = hashlib.sha256(f"{int(seed)}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_items(names, val_fraction: float, seed: int = 0, pattern: str | None = None,
                min_val: int = 1) -> tuple[list, list]:
    """Split ``names`` into ``(train, val)``, disjoint in subjects, reproducible from ``seed``.

    A subject is in validation when ``hash(seed, subject) < val_fraction``, so about that fraction of
    subjects (not of files) go there, independently of the other names in the list. When that gives fewer
    than ``min_val`` validation subjects (tiny lists), the subjects with the smallest hashes are moved.

    Args:
        names: file names or paths (order is kept within each side).
        val_fraction: in [0, 1).
        pattern: subject-id regex, see :func:`subject_id`.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1) or a bad ``pattern``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}")
    names = list(names)
    subjects = [subject_id(n, pattern) for n in names]
    hashes = {s: _unit_hash(seed, s) for s in set(subjects)}
    val_subjects = {s for s, h in hashes.items() if h < val_fraction}
    if val_fraction > 0 and len(val_subjects) < min_val and len(hashes) > min_val:
        val_subjects = set(sorted(hashes, key=hashes.get)[:min_val])
    train = [n for n, s in zip(names, subjects) if s not in val_subjects]
    val = [n for n, s in zip(names, subjects) if s in val_subjects]
    return train, val

"""The shipped FreeSurfer mapping against SynthSeg's own labels table (../shared/data/synthseg_label_maps).

Each structure of the table has the tissue class its name says (white matter, brain stem and ventral diencephalon:
WM; ventricles and CSF: CSF; cortex and the grey nuclei: GM), and ``--target labels`` is the table's order: the
structure on row i (background being row 0) is target class i, under its own name.
"""
import re

import pytest

from synthgen.data.tissue import freesurfer_mapping

CLASS = {"gm": 1, "wm": 2, "csf": 4}         # the generator's tissue classes (0 background, 3 partial volume)
# FreeSurfer labels the mapping places that SynthSeg's table does not list (names from FreeSurferColorLUT.txt)
OUTSIDE_THE_TABLE = {25: "wm", 57: "wm",                   # Left/Right-Lesion: white-matter lesions
                     77: "wm",                             # WM-hypointensities
                     31: "csf", 63: "csf",                 # Left/Right-choroid-plexus, inside the ventricles
                     72: "csf"}                            # 5th-Ventricle


def _class_of_name(name: str) -> str:
    if "white matter" in name or name in ("brain-stem",) or "ventral DC" in name:
        return "wm"
    if "ventricle" in name or name == "CSF":
        return "csf"
    return "gm"


def _table(shared_data):
    """``[(label, structure)]`` of SynthSeg's labels table in its order, background first."""
    text = (shared_data / "synthseg_label_maps" / "labels_table.txt").read_text()
    body = text.split("labels    structures", 1)[1]
    rows = [(int(m[1]), m[2].strip()) for m in re.finditer(r"^(\d+)\s+(.+)$", body, re.M)]
    assert rows[0] == (0, "background") and len(rows) == 33       # SynthSeg 2: background + 32 structures
    return rows


def _normalised(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


@pytest.fixture
def mapped():
    mapping = freesurfer_mapping()
    return mapping.table(), mapping.label_config()


def test_each_synthseg_structure_has_the_tissue_class_of_its_name(shared_data, mapped):
    table, config = mapped
    for label, name in _table(shared_data)[1:]:
        assert config.classes[table[label]] == CLASS[_class_of_name(name)], (label, name)
    for label, cls in OUTSIDE_THE_TABLE.items():
        assert config.classes[table[label]] == CLASS[cls], label


def test_target_labels_follow_the_synthseg_table(shared_data, mapped):
    table, config = mapped
    rows = _table(shared_data)
    for i, (label, name) in enumerate(rows):
        assert config.targets[table[label]] == i, (label, name)
        assert _normalised(config.target_names[i]) == _normalised(name), (i, name)
    listed = {table[label] for label, _ in rows}
    assert all(t == 0 for g, t in enumerate(config.targets) if g not in listed)    # the rest is background
    assert len(config.target_names) == len(rows)

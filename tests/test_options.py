"""One spelling per option on every command: per-folder file patterns, the old spellings for one release with a
warning line, one --crop syntax, and a command's folder errors answered before any file is read."""
import nibabel as nib
import numpy as np
import pytest

from synthgen import cli, preview, sample
from synthgen.data import check, open_store
from synthgen.data.__main__ import main as data_main
from synthgen.train import run

AFF = np.diag([1.0, 1.0, 1.0, 1.0])


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), AFF), str(path))


def _soop_like(tmp_path):
    """A tissue folder whose names do not match the SOOP lesion pattern, and a lesion folder with one file that the
    pattern leaves out."""
    labels = np.zeros((12, 14, 10), np.uint8)
    labels[2:10, 2:12, 2:8] = 1
    labels[4:8, 4:10, 3:7] = 2
    _save(tmp_path / "maps" / "sub-1_synthseg.nii.gz", labels)
    mask = np.zeros((12, 14, 10), np.uint8)
    mask[4:7, 5:8, 4:6] = 1
    _save(tmp_path / "soop" / "sub-1_lesion.nii.gz", mask)
    _save(tmp_path / "soop" / "sub-1_T1w.nii.gz", mask)       # not a lesion: the pattern must leave it out
    return tmp_path / "maps", tmp_path / "soop"


def test_pack_takes_a_lesion_pattern_that_leaves_the_tissue_folder_alone(tmp_path, capsys):
    maps, soop = _soop_like(tmp_path)
    assert data_main(["pack", "--tissue-maps", str(maps), "--lesions", str(soop), "--lesion-pattern",
                      "*_lesion.nii.gz", "--out", str(tmp_path / "store"), "--no-progress"]) == 0
    store = open_store(tmp_path / "store")
    assert (len(store.tissue_maps), len(store.lesions)) == (1, 1)
    assert "warning" not in capsys.readouterr().err


def test_old_glob_still_works_for_every_folder_with_a_warning_line(tmp_path, capsys):
    maps, soop = _soop_like(tmp_path)
    assert data_main(["check", "--lesions", str(soop), "--glob", "*_lesion.nii.gz", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "--glob is deprecated" in err and "--lesion-pattern" in err
    assert "--quiet is deprecated" in err and "--no-progress" in err
    # --glob applies to every folder, as before: the tissue folder has no file matching it
    assert data_main(["check", "--tissue-maps", str(maps), "--lesions", str(soop), "--glob", "*_lesion.nii.gz"]) == 2
    assert f"{maps}: no NIfTI files" in capsys.readouterr().out


def test_a_folder_without_a_matching_file_is_answered_before_any_file_is_read(tmp_path, monkeypatch, capsys):
    maps, soop = _soop_like(tmp_path)
    read = []
    monkeypatch.setattr(check, "check_mask", lambda *a, **k: read.append(a[0]))
    monkeypatch.setattr(check, "check_tissue_map", lambda *a, **k: read.append(a[0]))
    code = data_main(["pack", "--tissue-maps", str(maps), "--tissue-pattern", "*_labels.nii.gz", "--lesions",
                      str(soop), "--out", str(tmp_path / "store"), "--no-progress"])
    assert code == 2 and read == []
    assert f"error: {maps}: no NIfTI files (.nii, .nii.gz) matching '*_labels.nii.gz'" in capsys.readouterr().out
    assert not (tmp_path / "store" / "index.json").exists()


def test_training_answers_a_missing_folder_before_reading_the_others(tmp_path, monkeypatch):
    from synthgen.train.config import quick_preset
    from synthgen.train.loop import check_data
    maps, soop = _soop_like(tmp_path)
    read = []
    monkeypatch.setattr(check, "check_mask", lambda *a, **k: read.append(a[0]))
    monkeypatch.setattr(check, "check_tissue_map", lambda *a, **k: read.append(a[0]))
    cfg = quick_preset()
    cfg.data.tissue_maps, cfg.data.lesions, cfg.data.real_val = str(maps), str(soop), str(tmp_path / "gone")
    with pytest.raises(ValueError, match=f"{tmp_path / 'gone'}: no such file or folder"):
        check_data(cfg)
    assert read == []


@pytest.mark.parametrize("given", [["24"], ["24,16,8"], ["24x16x8"], ["24", "16", "8"]])
def test_crop_is_read_alike_by_every_command(given):
    expected = (24, 24, 24) if given == ["24"] else (24, 16, 8)
    for parser in (run.parser(), sample.parser(), preview.parser()):
        assert parser.parse_args(["--out", "x", "--crop", *given]).crop == expected


@pytest.mark.parametrize("bad", [["1,2"], ["0"], ["a"], ["8", "8"]])
def test_a_bad_crop_is_one_line_naming_the_option(bad, capsys):
    with pytest.raises(SystemExit):
        sample.parser().parse_args(["--out", "x", "--crop", *bad])
    assert "--crop must be N, D,H,W or D H W (positive ints)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive ints"):
        cli.crop_size(bad)

"""Train/validation splits: disjoint in subjects, reproducible, independent of the list."""
import pytest

from synthgen.data import split_items, subject_id


def test_subject_ids():
    assert subject_id("/x/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz") == "r001s001"
    assert subject_id("bwsrsub-1000_lesion.nii.gz") == "1000"
    assert subject_id("OAS30001_MR_d0129_tissue.nii.gz") == "OAS30001"
    assert subject_id("Subject_001.nii.gz") == "001"
    assert subject_id("case7_T1w.nii") == subject_id("case_7_mask.nii") == "7"
    assert subject_id("p12_FLAIR_mask.nii.gz") == "p12"
    assert subject_id("scanA-17.nii.gz", pattern=r"-(\d+)") == "17"
    with pytest.raises(ValueError, match="`pattern` must have one group"):
        subject_id("a.nii", pattern=r"\d+")
    with pytest.raises(ValueError, match="does not match the file name 'abc'"):
        subject_id("abc.nii", pattern=r"-(\d+)")


def test_split_is_disjoint_reproducible_and_list_independent():
    names = [f"sub-{i:03d}_ses-{s}_T1w.nii.gz" for i in range(200) for s in (1, 2)]
    train, val = split_items(names, 0.2, seed=3)
    assert split_items(names, 0.2, seed=3) == (train, val)
    assert sorted(train + val) == sorted(names)
    subj_t, subj_v = {subject_id(n) for n in train}, {subject_id(n) for n in val}
    assert not subj_t & subj_v and 20 < len(subj_v) < 60
    assert split_items(names, 0.2, seed=4) != (train, val)
    # the lesion list of the same subjects lands on the same sides: no lesion leaks into training
    lesions = [f"sub-{i:03d}_label-L_desc-T1lesion_mask.nii.gz" for i in range(0, 200, 3)]
    lt, lv = split_items(lesions, 0.2, seed=3)
    assert {subject_id(n) for n in lv} == subj_v & {subject_id(n) for n in lesions}
    assert {subject_id(n) for n in lt} <= subj_t


def test_tiny_lists_get_one_validation_subject_and_bad_fraction():
    train, val = split_items(["a_T1w.nii", "b_T1w.nii", "c_T1w.nii"], 0.01)
    assert len(val) == 1 and len(train) == 2
    assert split_items(["a.nii", "b.nii"], 0.0) == (["a.nii", "b.nii"], [])
    with pytest.raises(ValueError, match=r"`val_fraction` must be in \[0, 1\), got 1.0"):
        split_items(["a.nii"], 1.0)

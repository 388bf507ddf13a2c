"""The benchmark scripts run end to end on CPU (tiny sizes) and their roofline model follows the fast path."""
import json
import sys
from pathlib import Path

import synthgen
from synthgen.config import GeneratorConfig

from conftest import source_file  # noqa: E402

sys.path.insert(0, str(source_file("benchmarks")))

import roofline  # noqa: E402
import throughput  # noqa: E402


def test_throughput_writes_rows_with_floor_and_stages(tmp_path):
    out = tmp_path / "t.json"
    throughput.main(["--device", "cpu", "--sizes", "24", "--providers", "synthgen", "--repeats", "2",
                     "--json", str(out)])
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["size"] == 24 and row["ms_per_sample"] > 0 and row["floor_ms"] > 0 and row["stage_ms"]
    assert data["device"] and data["versions"]["torch"]


def test_throughput_lesion_rows_report_the_lesion_share(tmp_path):
    import nibabel as nib
    import numpy as np
    from synthgen.data import default_tissue_map
    _, affine = default_tissue_map(with_affine=True)
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[15:25, 15:25, 15:25] = 1
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.array([80.0, 100.0, 80.0]) + affine[:3, 3]   # inside the brain
    (tmp_path / "m").mkdir()
    nib.save(nib.Nifti1Image(mask, shifted), str(tmp_path / "m" / "a_lesion.nii.gz"))
    out = tmp_path / "t.json"
    throughput.main(["--device", "cpu", "--sizes", "24", "--providers", "synthgen+masks", "--repeats", "2",
                     "--masks", str(tmp_path / "m"), "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["provider"] == "synthgen+masks" and 0 < row["lesion_share"] < 1 and row["stage_ms"]["lesion"] > 0


def test_roofline_model_of_the_fast_path():
    cfg = GeneratorConfig(crop=(64, 64, 64))
    params = synthgen.SynthGenerator(cfg).sample_params((1, 1, 80, 80, 80), seed=0, batch=32)
    rows32 = roofline.passes(params, cfg.crop)
    rows16 = roofline.passes(params, cfg.crop, work_bytes=2)
    names = [r[0] for r in rows32]
    assert names == [r[0] for r in rows16]
    # noise and min/max ride in epilogues: no pass of their own, each exactly once
    assert sum("noise" in n for n in names) == 1 and not any(n.startswith(("noise", "min/max")) for n in names)
    assert sum("min/max" in n for n in names) == 2
    assert sum(r[1] for r in rows16) < 0.6 * sum(r[1] for r in rows32)
    assert sum(r[2] for r in rows16) == sum(r[2] for r in rows32)


def test_train_step_times_four_ways(tmp_path):
    import train_step
    out = tmp_path / "s.json"
    assert train_step.main(["--preset", "quick", "--device", "cpu", "--steps", "2", "--warmup", "0", "--crop", "24",
                            "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert set(row["ms"]) == {"synthesis", "premade", "on_the_fly", "ahead"}
    assert all(v["median"] > 0 for v in row["ms"].values()) and 0 < row["synthesis_share"] < 1


def test_connected_components_benchmark_rows(tmp_path, capsys):
    import pytest
    pytest.importorskip("cc3d")
    import connected_components
    out = tmp_path / "cc.json"
    assert connected_components.main(["--sizes", "16", "--repeats", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mask"] for r in rows] == ["lesions", "speckle"] and all(r["components"] > 0 for r in rows)
    assert all(r["scipy_ms"][0] > 0 and r["cc3d_ms"][0] > 0 for r in rows)
    assert "| 16^3 | speckle |" in capsys.readouterr().out


def test_field_amplitudes_matrices_match_cornucopia_splines_and_the_script_runs(tmp_path):
    """The separable matrices stand for torch-interpol's grid_pull (bound 'zero', cornucopia's elastic) and resize
    ('centers', bound 'nearest': cornucopia's bias); then a tiny run writes both columns."""
    import pytest
    import torch
    interpol = pytest.importorskip("interpol")
    import field_amplitudes as fa
    coeffs = torch.randn(1, 2, 4, 5, 3, dtype=torch.float64)
    grid, rows = (23, 19, 17), [torch.arange(0, n, 3) for n in (23, 19, 17)]
    mats = [fa.cornucopia_matrix(c, n, r, "zero") for c, n, r in zip(coeffs.shape[2:], grid, rows)]
    pts = torch.stack(torch.meshgrid(*[r.double() * (c - 1) / (n - 1) for r, c, n in zip(rows, coeffs.shape[2:], grid)],
                                     indexing="ij"), -1)
    ref = interpol.grid_pull(coeffs, pts, bound="zero", interpolation=3)
    assert torch.allclose(fa._evaluate(coeffs[0], mats), ref[0], atol=1e-10)
    mats = [fa.cornucopia_matrix(c, n, torch.arange(n), "replicate") for c, n in zip(coeffs.shape[2:], grid)]
    ref = interpol.resize(coeffs, shape=list(grid), interpolation=3, prefilter=False)
    assert torch.allclose(fa._evaluate(coeffs[0], mats), ref[0], atol=1e-10)
    pytest.importorskip("cornucopia")
    out = tmp_path / "f.json"
    assert fa.main(["--draws", "3", "--grid", "24", "--crop", "16", "--stride", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["field"] for r in rows] == ["elastic_std_mm", "elastic_max_mm", "bias_log_std"]
    assert all(r["cornucopia"]["p50"] > 0 and r["synthgen"]["p50"] > 0 for r in rows)


def test_lesion_blending_report_rows(tmp_path, capsys):
    import lesion_blending
    out = tmp_path / "b.json"
    assert lesion_blending.main(["--n", "2", "--masks", "0", "--samples", "1", "--crop", "32", "--threads", "1",
                                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    paper, inward = rows["paper (default)"], rows["inward (before issue 12)"]
    # procedural lesions lie in parenchyma: the paper's target is the mask, the old blending's weight is fainter
    assert paper["target_over_mask"]["p50"] == 1.0 and paper["halo_weight_mean"] > 0.2
    assert inward["halo_weight_mean"] == 0.0 and inward["weight_mean"] < paper["weight_mean"]
    assert "| target / mask volume" in capsys.readouterr().out

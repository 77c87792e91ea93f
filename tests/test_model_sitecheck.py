"""``cxrlabel site-check``: do a model's stored bands hold on a site's expert-read sample?"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.model import metrics
from cxrlabel.model.sitecheck import MIN_PER_CLASS, check_site

pytest.importorskip("onnxruntime", reason="the [model] extra (onnxruntime) is not installed")


def _sample(n_per_class: int, shift: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_per_class), np.zeros(n_per_class)].astype(int)
    p = np.clip(np.r_[rng.uniform(0.6, 1.0, n_per_class), rng.uniform(0.0, 0.4, n_per_class)], 0, 1)
    return y, np.clip(p - shift, 0.0, 1.0), np.arange(y.size).astype(str)


def test_bands_that_hold_are_said_to_hold() -> None:
    y, p, groups = _sample(60)
    check = check_site(y, p, groups, 0.55, 0.45, 0.95, 0.97, n_boot=200)
    assert check.holds and check.problems == []
    assert check.flag_sensitivity == 1.0 and check.clear_npv == 1.0
    assert check.auc_ci[0] <= check.auc <= check.auc_ci[1]


def test_a_site_whose_scores_run_lower_misses_sensitivity_and_is_told_what_would_hold() -> None:
    y, p, groups = _sample(60, shift=0.3)  # pneumonias now score 0.3-0.7
    check = check_site(y, p, groups, 0.55, 0.2, 0.95, 0.97, n_boot=200)
    assert not check.holds
    assert check.flag_sensitivity < 0.95
    assert check.site_flag_at < 0.55
    assert (p[y == 1] >= check.site_flag_at).mean() >= 0.95  # the suggestion meets the target
    assert any("would flag at" in problem for problem in check.problems)


def test_a_clear_band_with_pneumonia_in_it_misses_npv() -> None:
    y, p, groups = _sample(60)
    check = check_site(y, p, groups, 0.9, 0.8, 0.95, 0.97, n_boot=200)
    assert check.clear_npv < 0.97
    assert any("clear NPV" in problem for problem in check.problems)


def test_too_small_a_sample_never_holds() -> None:
    y, p, groups = _sample(MIN_PER_CLASS - 1)
    check = check_site(y, p, groups, 0.55, 0.45, 0.95, 0.97, n_boot=100)
    assert check.flag_sensitivity == 1.0 and not check.holds
    assert check.problems == [
        f"too few images to judge: {MIN_PER_CLASS - 1} pneumonia and {MIN_PER_CLASS - 1} "
        f"normal; read at least {MIN_PER_CLASS} of each"
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A random-weight model with stored operating points and 40 expert-read site images."""
    pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")
    from model_support import synthetic_xray, untrained_model_dir

    root = tmp_path_factory.mktemp("site")
    model = untrained_model_dir(root / "model")
    meta = json.loads((model / "model.json").read_text())
    meta["operating_points"] = {"min_sensitivity": 0.95, "min_npv": 0.97}
    (model / "model.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(3)
    rows = []
    for i in range(40):
        pneumonia = i % 2 == 0
        name = f"images/x{i:02d}.png"
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(synthetic_xray(rng, pneumonia, 96, 96)).save(root / name)
        rows.append({"file": name, "label": "PNEUMONIA" if pneumonia else "normal"})
    return root, model, rows


def _write(path: Path, rows: list[dict], fields=("file", "label")) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _run(truth: Path, model: Path, *extra: str):
    return CliRunner().invoke(app, ["site-check", str(truth), "--model", str(model), *extra])


def test_cli_figures_are_those_of_the_models_own_predictions(site, tmp_path) -> None:
    root, model, rows = site
    truth = _write(root / "truth.csv", rows)
    result = _run(truth, model, "-o", str(tmp_path / "site.json"))
    report = json.loads((tmp_path / "site.json").read_text())
    assert result.exit_code == (0 if report["holds"] else 1), result.output
    assert report["n"] == 40 and report["n_pneumonia"] == 20 and report["unreadable"] == 0
    from cxrlabel.model.infer import OnnxModel, predict_paths

    # The same ONNX scores `predict` gives (unrounded: a random-weight model scores in a
    # narrow range, where the CSV's 6 decimals would create ties).
    preds = predict_paths(OnnxModel(model), [root / r["file"] for r in rows])
    p = np.array([pred.p_pneumonia for pred in preds])
    y = np.array([r["label"] == "PNEUMONIA" for r in rows], dtype=int)
    assert report["auc"] == pytest.approx(metrics.roc_auc(y, p), abs=1e-6)
    assert report["flag_sensitivity"] == pytest.approx((p[y == 1] >= 0.6).mean())
    assert "too few images to judge" in result.output  # 20 of each: below MIN_PER_CLASS


def test_cli_refuses_a_bad_truth_file_and_names_every_problem(site) -> None:
    root, model, rows = site
    no_label = _write(root / "no_label.csv", rows, fields=("file",))
    result = _run(no_label, model)
    assert result.exit_code == 2 and "missing: label" in result.output
    bad = [dict(rows[0], label="maybe"), dict(rows[1], file="images/absent.png"), *rows[2:]]
    result = _run(_write(root / "bad.csv", bad), model)
    assert result.exit_code == 2
    assert "line 2: label 'MAYBE' is not NORMAL or PNEUMONIA" in result.output
    assert "line 3: no image file 'images/absent.png'" in result.output


def test_cli_leaves_out_an_unreadable_image_and_says_so(site, tmp_path) -> None:
    root, model, rows = site
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truth = _write(
        root / "with_broken.csv", [*rows, {"file": "images/broken.png", "label": "NORMAL"}]
    )
    result = _run(truth, model, "-o", str(tmp_path / "site.json"))
    report = json.loads((tmp_path / "site.json").read_text())
    assert report["n"] == 40 and report["unreadable"] == 1
    assert "could not read" in result.output and "broken.png" in result.output


def test_adopted_thresholds_are_the_samples_choice_and_the_old_ones_are_kept() -> None:
    from cxrlabel.model.sitecheck import adopted_meta, card_section

    y, p, groups = _sample(60, shift=0.3)  # a site whose pneumonias score lower
    check = check_site(y, p, groups, 0.55, 0.2, 0.95, 0.97, n_boot=200)
    meta = {"thresholds": {"flag": 0.55, "clear": 0.2}, "temperature": 1.0}
    new = adopted_meta(meta, check, "site.csv", "2026-12-04")
    assert new["thresholds"]["flag"] == pytest.approx(check.site_flag_at)
    assert new["thresholds"]["flag"] < 0.55
    assert new["thresholds"]["clear"] <= new["thresholds"]["flag"]
    assert (p[y == 1] >= new["thresholds"]["flag"]).mean() >= 0.95  # meets the target here
    assert new["site_calibration"]["previous"] == {"flag": 0.55, "clear": 0.2}
    assert meta["thresholds"] == {"flag": 0.55, "clear": 0.2}  # the input is not changed
    again = adopted_meta(new, check, "site2.csv", "2026-12-05")
    assert again["site_calibration_history"] == [new["site_calibration"]]
    assert "was 0.550" in card_section(new["site_calibration"])
    small = check_site(*_sample(MIN_PER_CLASS - 1), 0.55, 0.45, 0.95, 0.97, n_boot=100)
    with pytest.raises(ValueError, match="at least 30 of each"):
        adopted_meta(meta, small, "site.csv", "2026-12-04")


def test_cli_adopts_into_a_new_folder_that_predict_then_uses(site, tmp_path) -> None:
    """40 more images (30+ per class), ``--adopt-into``: a copy whose ``predict`` bands use
    the sample's thresholds; the original model is untouched; a second adoption into the same
    folder, or from too small a sample, is refused and writes nothing."""
    root, model, rows = site
    rng = np.random.default_rng(5)
    more = []
    for i in range(40):
        pneumonia = i % 2 == 0
        name = f"images/y{i:02d}.png"
        Image.fromarray(synthetic_xray_of(rng, pneumonia)).save(root / name)
        more.append({"file": name, "label": "PNEUMONIA" if pneumonia else "NORMAL"})
    truth = _write(root / "truth80.csv", rows + more)
    original = (model / "model.json").read_text()
    target = tmp_path / "site-model"
    result = _run(truth, model, "--adopt-into", str(target), "-o", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    meta = json.loads((target / "model.json").read_text())
    assert meta["thresholds"]["flag"] == pytest.approx(report["site_flag_at"])
    assert meta["site_calibration"]["n"] == 80 and meta["site_calibration"]["truth"] == str(truth)
    assert (model / "model.json").read_text() == original
    assert (target / "model.onnx").read_bytes() == (model / "model.onnx").read_bytes()
    from cxrlabel.model.infer import OnnxModel

    assert OnnxModel(target).flag_at == pytest.approx(report["site_flag_at"])
    again = _run(truth, model, "--adopt-into", str(target))
    assert again.exit_code == 2 and "already exists" in again.output
    small = _run(_write(root / "truth40.csv", rows), model, "--adopt-into", str(tmp_path / "s"))
    assert small.exit_code == 2 and "not adopted" in " ".join(small.output.split())
    assert not (tmp_path / "s").exists()


def synthetic_xray_of(rng, pneumonia: bool):
    from model_support import synthetic_xray

    return synthetic_xray(rng, pneumonia, 96, 96)

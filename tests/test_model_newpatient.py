"""Issue 21: the new-patient estimate's splits, threshold pooling, TTA and blur augmentation."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cxrlabel.model.data import Example
from cxrlabel.model.metrics import roc_auc
from cxrlabel.model.newpatient import (
    HoldoutResult,
    check_split,
    earliest_patients,
    look_score,
    look_shift,
    originals_to_squashed,
    squashed_cv,
    thresholds_across,
)


def _examples(n_patients: int = 60, seed: int = 0) -> list[Example]:
    """Patients with 1-3 images each, some squashed copies, some originals, some both."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_patients):
        label = "PNEUMONIA" if k % 3 else "NORMAL"
        for j in range(int(rng.integers(1, 4))):
            out.append(
                Example(
                    path=Path(f"p{k}_{j}.png"),
                    p_pneumonia=float(label != "NORMAL"),
                    split="train",
                    patient_id=f"P{k}",
                    label=label,
                    reference_label=label,
                    upstream_resized=bool(rng.random() < 0.7),
                )
            )
    return out


def _assert_sound(examples, split):
    train_patients = {examples[i].patient_id for i in split.train}
    scored_patients = {examples[i].patient_id for i in split.scored}
    assert not train_patients & scored_patients
    assert all(examples[i].upstream_resized is True for i in split.scored)
    assert len(split.scored) > 0 and len(split.train) > 0
    check_split(examples, split)  # the guard run_holdout applies agrees


def test_squashed_cv_scores_each_squashed_copy_once_with_new_patients():
    examples = _examples()
    splits = squashed_cv(examples, n_folds=3, seed=1)
    for split in splits:
        _assert_sound(examples, split)
    scored = np.concatenate([s.scored for s in splits])
    squashed = [i for i, e in enumerate(examples) if e.upstream_resized]
    assert sorted(scored.tolist()) == squashed  # every squashed copy, exactly once
    # What a fold leaves unused are the originals of its held-out patients: every image of a
    # training patient is trained on.
    for split in splits:
        used = set(split.train.tolist()) | set(split.scored.tolist())
        train_patients = {examples[i].patient_id for i in split.train}
        unused = [examples[i] for i in range(len(examples)) if i not in used]
        assert all(e.upstream_resized is False for e in unused)
        assert not {e.patient_id for e in unused} & train_patients


def test_originals_to_squashed_trains_on_originals_only():
    examples = _examples()
    split = originals_to_squashed(examples)
    _assert_sound(examples, split)
    assert all(examples[i].upstream_resized is False for i in split.train)


def test_check_split_catches_a_leak():
    examples = _examples()
    split = squashed_cv(examples, 2)[0]
    leaky = type(split)(split.name, np.append(split.train, split.scored[0]), split.scored)
    with pytest.raises(AssertionError, match="both sides"):
        check_split(examples, leaky)


MANIFEST = (
    Path(os.environ.get("CXRLABEL_SHARED_DATA", "../shared/data")) / "kermany" / "manifest.csv"
)


@pytest.mark.skipif(not MANIFEST.is_file(), reason="shared Kermany data not on this machine")
def test_splits_hold_on_the_real_manifest():
    with MANIFEST.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] in ("train", "val")]
    examples = [
        Example(
            Path(r["file"]),
            float(r["label"] == "PNEUMONIA"),
            "train",
            r["patient_id"],
            r["label"],
            r["label"],
            r["upstream_resized"] == "true",
        )
        for r in rows
    ]
    for split in [*squashed_cv(examples, 3), originals_to_squashed(examples)]:
        _assert_sound(examples, split)
        assert {examples[i].label for i in split.scored} == {"NORMAL", "PNEUMONIA"}


def test_thresholds_across_runs_are_pooled_with_a_spread():
    rng = np.random.default_rng(0)
    runs = []
    for seed in range(3):
        y = rng.integers(0, 2, 300)
        p = np.clip(0.5 * y + 0.25 + rng.normal(0, 0.15, 300), 0, 1)
        runs.append(
            HoldoutResult(
                f"r{seed}", seed, p, p, y, np.arange(300).astype(str), 1.0, 0.5, 0.2, 0.99, 1, 1.0
            )
        )
    th = thresholds_across(runs)
    flag = th["pooled"]["flag"]
    assert flag["q05"] <= flag["q50"] <= flag["q95"]
    assert flag["chosen"] <= flag["point"]
    assert len(th["per_run_flag"]) == 3
    # The pooled rule keeps the asked sensitivity on the pooled scores.
    y = np.concatenate([r.y for r in runs])
    p = np.concatenate([r.p for r in runs])
    assert (p[y == 1] >= flag["point"]).mean() >= 0.95


def _figures(**changes) -> dict:
    """One scheme's entry of a new-patient estimate file, as the benchmark writes it."""
    figures = {
        "n": 2313,
        "auc": 0.9871,
        "auc_ci": [0.983, 0.991],
        "proxy_auc": 0.99,
        "flag_sensitivity": 0.972,
        "flag_sensitivity_ci": [0.96, 0.98],
        "flag_specificity": 0.907,
        "flag_specificity_ci": [0.88, 0.93],
        "clear_npv": 0.992,
        "clear_npv_ci": [0.98, 1.0],
        "clear_specificity": 0.441,
    }
    return figures | changes


def _estimate_file(path: Path, schemes: dict, **changes) -> Path:
    est = {
        "measured_by": "benchmarks/model_newpatient.py",
        "size": 128,
        "epochs": 20,
        "augment": "default",
        "tta": False,
        "date": "2026-12-04",
        "schemes": schemes,
    }
    path.write_text(json.dumps(est | changes))
    return path


def test_card_quotes_the_new_patient_estimate_and_its_recipe(tmp_path):

    from cxrlabel.model.card import new_patient_section

    assert "No new-patient estimate" in new_patient_section(
        {"input_size": 96}, tmp_path / "absent.json"
    )
    schemes = {"squashed_cv": _figures()}
    path = _estimate_file(tmp_path / "e.json", schemes, size=96, epochs=3, seeds=[0])
    text = new_patient_section({"input_size": 96}, path)
    assert "0.987 [0.983, 0.991]" in text and "0.907 [0.880, 0.930]" in text
    assert "not 96 px" not in text
    assert "trained at 128 px, not 96 px" in new_patient_section({"input_size": 128}, path)
    assert "averages 3 seeds" in new_patient_section({"input_size": 96, "ensemble": 3}, path)
    assert "averages" not in text
    assert "cxrlabel site-check" in text  # the way to check the bands at a new site
    assert "| squashed_cv | 1 seed |" in text  # runs pooled, no spread from one run


def test_card_shows_the_seed_spread_the_bootstrap_interval_leaves_out(tmp_path):
    from cxrlabel.model.card import new_patient_section

    figures = _figures(
        n=3432, seeds=[0, 1, 2, 3, 4, 5], run_auc=[0.975, 0.974, 0.975, 0.949, 0.964, 0.970]
    )
    cv = dict(figures, seeds=[0], folds=3, run_auc=[0.996, 0.997, 0.998])
    path = _estimate_file(tmp_path / "e.json", {"look_shift": figures, "squashed_cv": cv})
    text = new_patient_section({"input_size": 128}, path)
    assert "| look_shift | 6 seeds, AUC 0.949-0.975 | 3432 |" in text
    assert "| squashed_cv | 3 folds x 1 seed, AUC 0.996-0.998 |" in text
    assert "do not hold the spread between training seeds" in text


torch = pytest.importorskip("torch", reason="the [model] extra (PyTorch) is not installed")


def test_tta_views_keep_shape_and_range():
    from cxrlabel.model.tensors import tta_views

    x = torch.rand(3, 1, 32, 32)
    views = tta_views(x)
    assert len(views) == 4 and torch.equal(views[0], x)
    for v in views:
        assert v.shape == x.shape and float(v.min()) >= 0 and float(v.max()) <= 1


def test_predict_logits_with_tta_matches_the_mean_of_views():
    from cxrlabel.model.net import TriageNet
    from cxrlabel.model.tensors import predict_logits, torch_logits

    torch.manual_seed(0)
    model = TriageNet().eval()
    pixels = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    plain = predict_logits(model, pixels, torch.device("cpu"))
    assert np.allclose(plain, torch_logits(model, pixels, torch.device("cpu"))[0])
    tta = predict_logits(model, pixels, torch.device("cpu"), tta=True)
    assert tta.shape == (5,) and not np.allclose(tta, plain)


def test_blur_smooths_and_off_means_untouched():
    from cxrlabel.model.augment import AugmentConfig, augment, gaussian_blur

    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    blurred = gaussian_blur(x, torch.tensor([0.01, 1.0]))
    assert torch.allclose(blurred[0], x[0], atol=1e-6)  # tiny sigma: unchanged
    assert float(blurred[1].max()) < 0.5 and float(blurred[1].sum()) == pytest.approx(1.0)
    # Default augmentation draws no blur numbers: seeded results stay as before.
    cfg = AugmentConfig()
    a = augment(
        torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)),
        cfg,
        torch.Generator().manual_seed(2),
    )
    strong = AugmentConfig.strong()
    b = augment(
        torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)),
        strong,
        torch.Generator().manual_seed(2),
    )
    assert a.shape == b.shape and float(b.min()) >= 0 and float(b.max()) <= 1


def test_earliest_patients_holds_out_the_lowest_ids_of_each_series():
    def ex(pid: str, squashed: bool = True) -> Example:
        return Example(
            path=Path(f"{pid}.png"),
            p_pneumonia=float(pid.startswith("person")),
            split="train",
            patient_id=pid,
            label="PNEUMONIA" if pid.startswith("person") else "NORMAL",
            reference_label=None,
            upstream_resized=squashed,
        )

    examples = [ex(f"IM-{n:04d}") for n in range(115, 125)]
    examples += [ex(f"NORMAL2-IM-{n:04d}") for n in range(400, 410)]
    examples += [ex(f"person{n}") for n in range(1, 21)] + [ex("person1", squashed=False)]
    split = earliest_patients(examples, share=0.2)
    _assert_sound(examples, split)
    held = {examples[i].patient_id for i in split.scored}
    # Numeric order, not string order: person10..person19 sort after person9.
    assert held == {"IM-0115", "IM-0116", "NORMAL2-IM-0400", "NORMAL2-IM-0401"} | {
        "person1",
        "person2",
        "person3",
        "person4",
    }
    # The original of a held-out patient is neither trained on nor scored.
    original = len(examples) - 1
    assert original not in split.train and original not in split.scored
    with pytest.raises(ValueError):
        earliest_patients(examples, share=1.0)


def test_look_shift_holds_out_the_patients_that_look_like_the_other_class():
    examples = _examples(n_patients=90, seed=3)
    rng = np.random.default_rng(3)
    y = np.array([e.evaluation_target for e in examples])
    # Pneumonia films are greyer (less contrast) on average; looks overlap between classes.
    contrast = np.where(y == 1, 60.0, 90.0) + rng.normal(0, 20, len(examples))
    pixels = np.clip(
        128 + contrast[:, None, None] * rng.standard_normal((len(examples), 16, 16)), 0, 255
    ).astype(np.uint8)
    split = look_shift(examples, pixels, share=0.25)
    _assert_sound(examples, split)
    score = look_score(examples, pixels)
    held = np.zeros(len(examples), bool)
    held[split.scored] = True
    for cls in (0, 1):
        # Held-out normals look more like pneumonia than kept normals, and the reverse.
        inside = score[held & (y == cls)].mean()
        outside = score[~held & (y == cls) & np.isin(np.arange(len(y)), split.train)].mean()
        assert (inside > outside) if cls == 0 else (inside < outside)
    # The global look alone ranks the held-out images the wrong way round.
    assert roc_auc(y[split.scored], score[split.scored]) < 0.5 < roc_auc(y, score)


def test_estimates_of_one_recipe_merge_and_of_another_are_refused(tmp_path):
    import importlib.util
    import json

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "model_newpatient.py"
    spec = importlib.util.spec_from_file_location("model_newpatient_bench", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recipe = {"size": 128, "epochs": 20, "augment": "default", "tta": False, "patience": 0}
    recipe["widths"] = [16, 32, 64, 128]
    path = tmp_path / "estimate.json"
    path.write_text(json.dumps(recipe | {"seeds": [0, 1], "schemes": {"a": 1, "b": 2}}))
    merged = module.merged_estimate(path, recipe | {"seeds": [0], "schemes": {"b": 3, "c": 4}})
    assert merged["schemes"] == {"a": 1, "b": 3, "c": 4}
    assert merged["seeds"] is None  # per scheme from now on
    with pytest.raises(SystemExit, match="epochs"):
        module.merged_estimate(path, recipe | {"epochs": 3, "schemes": {}})
    with pytest.raises(SystemExit, match="patience"):  # the old stopping rule: another recipe
        module.merged_estimate(path, recipe | {"patience": 4, "schemes": {}})
    # Estimates from before pre-training existed were measured without it.
    no_pretraining = recipe | {"pretrain_epochs": 0, "schemes": {"d": 5}}
    assert module.merged_estimate(path, no_pretraining)["schemes"]["d"] == 5
    with pytest.raises(SystemExit, match="pretrain_epochs"):
        module.merged_estimate(path, recipe | {"pretrain_epochs": 20, "schemes": {}})
    with pytest.raises(SystemExit, match="average_last"):  # weight averaging: another recipe
        module.merged_estimate(path, recipe | {"average_last": 0.3, "schemes": {}})


def test_every_shipped_size_ensemble_of_the_seeds_is_scored():
    import importlib.util
    from types import SimpleNamespace

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "model_newpatient.py"
    spec = importlib.util.spec_from_file_location("model_newpatient_bench", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    runs = [
        SimpleNamespace(y=y, logits=y * 1.5 + rng.normal(0, 1, 100), temperature=1.0 + i)
        for i in range(6)
    ]
    got = module._shipped_ensembles(runs)
    assert got["members"] == 3 and got["n"] == 20  # 6 choose 3
    assert got["min"] <= got["median"] <= got["max"]
    # The best member ensemble is better than the worst, and none reads below the worst run.
    single = [roc_auc(y, r.logits) for r in runs]
    assert got["max"] > got["min"] and got["min"] >= min(single) - 0.02
    assert module._shipped_ensembles(runs[:2]) is None  # fewer runs than members


def test_card_quotes_the_measured_ensembles_of_its_size(tmp_path):
    from cxrlabel.model.card import new_patient_section

    ensembles = {"members": 3, "n": 20, "min": 0.966, "median": 0.973, "max": 0.979}
    figures = _figures(seeds=[0, 1, 2, 3, 4, 5], ensemble_auc=ensembles)
    path = _estimate_file(tmp_path / "e.json", {"look_shift": figures})
    text = new_patient_section({"input_size": 128, "ensemble": 3}, path)
    assert "Every 3-seed ensemble drawn from the measured seeds reads AUC `look_shift` " in text
    assert "median 0.973 (0.966-0.979, 20 ensembles)" in text
    assert "ensemble drawn" not in new_patient_section({"input_size": 128, "ensemble": 2}, path)


def test_a_holdout_run_can_also_score_with_batch_norm_measured_on_the_scored_images():
    from rich.console import Console

    from cxrlabel.model.newpatient import run_holdout
    from cxrlabel.model.train import TrainConfig

    examples = _examples(n_patients=90)
    rng = np.random.default_rng(0)
    sick = np.array([e.label == "PNEUMONIA" for e in examples])
    pixels = np.clip(
        rng.normal(120 + 40 * sick[:, None, None], 30, (len(examples), 32, 32)), 0, 255
    )
    pixels = pixels.astype(np.uint8)
    split = originals_to_squashed(examples)
    cfg = TrainConfig(size=32, max_epochs=1, batch_size=16, threads=2, widths=(4, 8, 8, 8))
    plain = run_holdout(examples, pixels, split, cfg, Console(quiet=True))
    assert plain.adapted_logits is None
    # The scored images are brighter than the training ones: a site whose films differ.
    brighter = pixels.copy()
    brighter[split.scored] = np.clip(brighter[split.scored].astype(int) + 50, 0, 255)
    r = run_holdout(examples, brighter, split, cfg, Console(quiet=True), adapt_bn=True)
    assert r.adapted_logits.shape == r.logits.shape == (len(split.scored),)
    assert np.isfinite(r.adapted_logits).all()
    assert not np.allclose(r.adapted_logits, r.logits)  # the statistics did move


def test_the_central_crop_experiment_cuts_the_borders_and_keeps_the_size():
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "model_newpatient.py"
    spec = importlib.util.spec_from_file_location("model_newpatient_bench", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pixels = np.zeros((2, 40, 40), np.uint8)
    pixels[:, :4, :] = 255  # a burnt-in label along the top border
    pixels[:, 10:30, 10:30] = 200  # the subject
    out = module._central_crop(pixels, 0.5)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert out[:, :4].max() == 200  # the border label is gone
    assert (out[:, 2:38, 2:38] == 200).all()  # the central half now fills the image

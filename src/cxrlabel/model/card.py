"""MODEL_CARD.md and the plots a reader looks at (training curve, reliability diagram)."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxrlabel.model.bands import BAND_TEXT

CARD_FILE = "MODEL_CARD.md"


def write_plots(model_dir: Path, history: list[dict], y_val: np.ndarray, p_val: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="soft-label cross-entropy", title="Training curve")
    ax1.legend()
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p_val, edges[1:-1]), 0, 9)
    mids = [
        (p_val[which == b].mean(), y_val[which == b].mean())
        for b in range(10)
        if (which == b).any()
    ]
    ax2.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax2.plot(*zip(*mids, strict=True), "o-", label="validation")
    ax2.set(
        xlabel="predicted p(pneumonia)",
        ylabel="observed share with pneumonia",
        title="Reliability (validation, after temperature scaling)",
    )
    ax2.legend()
    fig.tight_layout()
    fig.savefig(model_dir / "training.png", dpi=110)
    plt.close(fig)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _metrics_table(evaluation: dict) -> str:
    rows = [
        ("images (pneumonia)", lambda m: f"{m['n']} ({m['n_pneumonia']})"),
        (
            "AUC [95 % CI]",
            lambda m: f"{_fmt(m['auc'])} [{_fmt(m['auc_ci'][0])}, {_fmt(m['auc_ci'][1])}]",
        ),
        (
            "accuracy at p = 0.5 [95 % CI]",
            lambda m: (
                f"{_fmt(m['accuracy'])} [{_fmt(m['accuracy_ci'][0])}, {_fmt(m['accuracy_ci'][1])}]"
            ),
        ),
        ("ECE (15 bins)", lambda m: _fmt(m["ece"])),
        (
            "flag: sensitivity / specificity",
            lambda m: f"{_fmt(m['flag_sensitivity'])} / {_fmt(m['flag_specificity'])}",
        ),
        (
            "clear: NPV / pneumonia kept out of clear",
            lambda m: f"{_fmt(m['clear_npv'])} / {_fmt(m['clear_sensitivity'])}",
        ),
        (
            "share flag / review / clear",
            lambda m: f"{m['share_flag']:.2f} / {m['share_review']:.2f} / {m['share_clear']:.2f}",
        ),
        ("pneumonia cases in clear", lambda m: str(m["pneumonia_in_clear"])),
    ]
    names = list(evaluation)
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [
        f"| {label} | " + " | ".join(fn(evaluation[n]) for n in names) + " |" for label, fn in rows
    ]
    return "\n".join(lines)


def _label_summary(dataset_dir: Path) -> str:
    meta = dataset_dir / "metadata.csv"
    if not meta.is_file():
        return "Not available."
    with meta.open(newline="", encoding="utf-8") as fh:
        # The labels the model learned from (train) and was tuned on (validation); a test
        # split may carry labels of another source (the benchmark's expert labels).
        rows = [
            r
            for r in csv.DictReader(fh)
            if (r.get("split") or "").strip().lower() in ("train", "validation")
        ]
    if not rows:
        return "No train or validation rows."
    conf = [float(r["confidence"]) for r in rows if r.get("confidence")]
    soft = [float(r["p_PNEUMONIA"]) for r in rows]
    reviewed = sum((r.get("expert_reviewed") or "").lower() == "true" for r in rows)
    with_ref = [r for r in rows if r.get("reference_label")]
    agree = sum(r["reference_label"] == r["label"] for r in with_ref)
    lines = [
        f"- {len(rows)} train + validation images; {sum(p >= 0.5 for p in soft)} labelled "
        "PNEUMONIA.",
        f"- Mean label confidence {np.mean(conf):.3f}." if conf else "- No confidence column.",
        f"- Soft labels strictly between 0.02 and 0.98: "
        f"{sum(0.02 < p < 0.98 for p in soft)} images.",
        f"- Expert-reviewed: {reviewed}.",
    ]
    if with_ref:
        lines.append(
            f"- Label agrees with the reference label on {agree}/"
            f"{len(with_ref)} of these images ({agree / len(with_ref):.1%})."
        )
    return "\n".join(lines)


def _label_source(dataset_dir: Path) -> str:
    """Who made the training labels, in one paragraph (read from the dataset's README title).

    A ``cxrlabel export`` is crowd-made; the benchmark's reference datasets say in their title
    whether they carry expert labels instead.
    """
    readme = dataset_dir / "README.md"
    title = readme.read_text(encoding="utf-8").split("\n", 1)[0] if readme.is_file() else ""
    if "expert labels" in title and "crowd" not in title:
        return (
            "Targets are the dataset's **expert labels** (`p_PNEUMONIA` 0 or 1), not crowd "
            "labels: this model measures what the network can learn, not the crowd "
            "pipeline."
        )
    if "crowd-like" in title:
        return (
            "Targets are expert labels made **crowd-like** on purpose (flipped at a set "
            "rate, soft confidence): a stand-in for crowd labels, see the README below."
        )
    return (
        "Targets are the export's **soft labels** (`p_PNEUMONIA`, trained with a "
        "soft-target cross-entropy). In a cxrlabel export they are **crowd-made**: the "
        "aggregate's probabilities from non-expert annotators through cxrlabel's quality "
        "control (expert-reviewed and gold images carry the expert's label), and noisier "
        "than a radiologist's."
    )


def _readme_quality(dataset_dir: Path) -> str:
    """Sections of the export's datasheet about label quality, quoted as they are."""
    readme = dataset_dir / "README.md"
    if not readme.is_file():
        return "The export carries no README.md datasheet, so no crowd QA figures are quoted."
    sections = re.split(r"(?m)^(?=#{2,3} )", readme.read_text(encoding="utf-8"))
    wanted = [
        s.strip()
        for s in sections
        if re.match(r"#{2,3} .*(quality|qa|label|annotat|crowd|agreement|gold)", s, re.IGNORECASE)
    ]
    if not wanted:
        return "The export's README.md has no section on label quality."
    body = "\n\n".join(re.sub(r"(?m)^#", "###", s, count=0) for s in wanted)
    return "Quoted from the export's datasheet:\n\n" + body


ESTIMATE_FILE = Path(__file__).with_name("newpatient_estimate.json")


def _ci(pair: list[float]) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _ensembles(schemes: dict, members: int) -> str:
    """The measured AUC of every ensemble of this model's size drawn from a scheme's seeds."""
    said = [
        f"`{name}` median {e['median']:.3f} ({e['min']:.3f}-{e['max']:.3f}, {e['n']} ensembles)"
        if e["n"] > 1
        else f"`{name}` {e['median']:.3f} (one ensemble)"
        for name, s in schemes.items()
        if (e := s.get("ensemble_auc")) and e["members"] == members
    ]
    if not said:
        return ""
    return (
        f" Every {members}-seed ensemble drawn from the measured seeds reads AUC "
        + "; ".join(said)
        + ": which seeds a model draws moves its figure that much."
    )


def _runs(scheme: dict, seeds_of_file: list[int] | None) -> str:
    """How many runs a scheme's figures pool, and their AUCs' range (the seed spread)."""
    seeds = scheme.get("seeds") or seeds_of_file or []
    runs = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    if scheme.get("folds"):
        runs = f"{scheme['folds']} folds x {runs}"
    aucs = scheme.get("run_auc") or []
    if len(aucs) > 1:
        runs += f", AUC {min(aucs):.3f}-{max(aucs):.3f}"
    return runs


def new_patient_section(meta: dict, estimate_file: Path = ESTIMATE_FILE) -> str:
    """Expected figures on new patients, from the recipe's measured new-patient estimate.

    The validation figures above come from a split drawn like the training data; what holds on
    new patients was measured separately (benchmarks/model_newpatient.py) for a recipe, and is
    quoted here with the recipe, so a reader sees when this model was trained differently.
    """
    title = "### Expected on new patients\n\n"
    if not estimate_file.is_file():
        return title + (
            "No new-patient estimate is bundled: expect lower figures than the "
            "validation ones above (see docs/model.md)."
        )
    est = json.loads(estimate_file.read_text(encoding="utf-8"))
    rows = [
        "| scheme | runs | images | proxy AUC | AUC [95 % CI] | flag sensitivity | "
        "flag specificity | clear NPV | normals cleared |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in est["schemes"].items():
        runs = _runs(s, est.get("seeds"))
        rows.append(
            f"| {name} | {runs} | {s['n']} | {s['proxy_auc']:.3f} | {s['auc']:.3f} "
            f"{_ci(s['auc_ci'])} | {s['flag_sensitivity']:.3f} "
            f"{_ci(s['flag_sensitivity_ci'])} | {s['flag_specificity']:.3f} "
            f"{_ci(s['flag_specificity_ci'])} | {s['clear_npv']:.3f} "
            f"{_ci(s['clear_npv_ci'])} | {s['clear_specificity']:.3f} |"
        )
    same = est["size"] == meta["input_size"]
    est_pretrain = est.get("pretrain_epochs", 0)
    est_average = est.get("average_last", 0.0)
    recipe = (
        f"{est['size']} px, {est['epochs']} epochs, {est['augment']} augmentation"
        f"{', test-time augmentation' if est['tta'] else ''}"
        f"{f', {est_pretrain} epochs of SimCLR pre-training' if est_pretrain else ''}"
        f"{f', weights {_averaging(est_average)}' if est_average else ''}; "
        f"measured {est['date']}"
    )
    note = (
        ""
        if same
        else f"\n\n**This model was trained at {meta['input_size']} px, not "
        f"{est['size']} px: the figures describe the recipe, not this model.**"
    )
    pretrained = bool(meta.get("training", {}).get("pretrain"))
    if pretrained != bool(est_pretrain):
        note += (
            f"\n\n**This model was trained {'with' if pretrained else 'without'} "
            f"self-supervised pre-training, the recipe measured "
            f"{'with' if est_pretrain else 'without'}: the figures describe the recipe.**"
        )
    averaged = meta.get("training", {}).get("config", {}).get("average_last", 0.0)
    if meta.get("training") and averaged != est_average:
        note += (
            f"\n\n**This model's weights were {_averaging(averaged)}, the recipe's "
            f"{_averaging(est_average)}: the figures describe the recipe.**"
        )
    if meta.get("ensemble", 1) > 1:
        note += (
            f"\n\nThe figures pool single models of the recipe; this model averages "
            f"{meta['ensemble']} seeds, which on `look_shift` read a little higher than their "
            "members pooled (+0.002 to +0.005 AUC; docs/model.md)."
            + _ensembles(est["schemes"], meta["ensemble"])
        )
    note += (
        "\n\nThe intervals are patient-bootstrap intervals of the pooled scores: they do not "
        "hold the spread between training seeds, which the column *runs* shows where it was "
        "measured and which is the larger uncertainty."
    )
    return (
        title + f"Internal new-patient estimate ({est['measured_by']}, expert labels, "
        f"Kermany train+val images; recipe: {recipe}). Thresholds as each run chose them "
        f"on its own validation split; 95 % patient-bootstrap intervals. **The kept-aside "
        f"official Kermany test split has read much lower than this estimate** (issue 21: "
        f"AUC 0.949, flag specificity 0.745 at sensitivity 0.972, crowd labels, 128 px): "
        f"treat these figures as an upper bound for another hospital's images, and check "
        f"the bands on that hospital's own expert-read sample before triage use there "
        f"(`cxrlabel site-check TRUTH.csv --model THIS_FOLDER`; where they do not hold, "
        f"`--adopt-into NEW_FOLDER` writes a copy with the thresholds that sample supports; "
        f"docs/model.md).\n\n" + "\n".join(rows) + note
    )


def _start(training: dict) -> str:
    """Where the weights started: random, or self-supervised pre-training (model/pretrain.py)."""
    history = training.get("pretrain") or []
    if not history:
        return "scratch (random weights)"
    return (
        f"features pre-trained without labels on the same training images ({len(history)} "
        f"epochs of SimCLR, contrastive loss {history[0]['loss']:.2f} -> "
        f"{history[-1]['loss']:.2f}; no outside data or downloaded weights)"
    )


def _averaging(share: float) -> str:
    return f"averaged over the last {share:.0%} of the schedule" if share else "not averaged"


def _kept(meta: dict) -> str:
    """Which weights the model holds: an average over the schedule's end, or the best epoch."""
    tr = meta["training"]
    first = " for the first member" if meta.get("ensemble", 1) > 1 else ""
    share = tr["config"].get("average_last", 0.0)
    if share:
        return (
            f"the weights of every step in the last {share:.0%} of the schedule are averaged "
            f"(stochastic weight averaging; batch-norm statistics measured again), not one "
            f"epoch's ({tr['epochs_run']} epochs run{first})"
        )
    return (
        f"the epoch with the best validation loss is kept (epoch {tr['best_epoch']} of "
        f"{tr['epochs_run']}{first})"
    )


def _blur(augment: dict) -> str:
    if not augment.get("blur_prob"):
        return ""
    return (
        f", Gaussian blur (sigma up to {augment['max_blur_sigma']} px on "
        f"{augment['blur_prob']:.0%} of images)"
    )


def _seed_spread(meta: dict) -> str:
    """How far each ensemble member's own thresholds sit apart: the seed's share of noise."""
    spread = meta.get("seed_spread")
    asked = meta.get("training", {}).get("config", {}).get("ensemble", 1)
    trained = len(spread["flag"]) if spread else 1
    fewer = (
        f" {asked} members were asked for; only {trained} fitted the time budget with a full "
        "schedule each (members are never shortened to make room)."
        if asked > trained
        else ""
    )
    if not spread or len(spread["flag"]) < 2:
        return (
            "A single model (no seed ensemble): between training seeds the flag threshold "
            "moved from 0.62 to 0.83 on the Kermany data when runs stopped early; "
            "`--ensemble 3` averages seeds and steadies it." + fewer
        )

    def span(values: list[float]) -> str:
        return f"{min(values):.4f}-{max(values):.4f}"

    return (
        f"Seed ensemble of {len(spread['flag'])} members (mean logit, one ONNX graph). "
        f"Each member alone would have set the flag threshold at {span(spread['flag'])}, "
        f"the clear threshold at {span(spread['clear'])} and T at "
        f"{span(spread['temperature'])}; the stored values are fitted on the ensemble." + fewer
    )


def _warnings(problems: list[str]) -> str:
    """A loud section at the top when training data were too few or calibration degenerated."""
    if not problems:
        return ""
    lines = "\n".join(f"- {p}" for p in problems)
    return f"""
## Warnings

**Do not use this model for triage before these are fixed** (more labelled images, or a
check of the export):

{lines}
"""


def write_card(model_dir: Path, meta: dict, dataset_dir: Path) -> Path:
    ops, th, tr = meta["operating_points"], meta["thresholds"], meta["training"]
    evaluation = meta["metrics"]
    has_test = "test" in evaluation
    card = f"""# Model card: cxrlabel pneumonia triage model

Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by cxrlabel {meta["cxrlabel_version"]}.
{_warnings(meta.get("warnings", []))}

## Intended use

A **triage aid** for frontal chest X-rays of **children aged one to five**: it orders and
groups studies so that a doctor reads the likely-pneumonia ones first. Every image still needs a
doctor's read. It sorts images into three bands:

| band | rule | meaning |
|---|---|---|
| flag | p >= {th["flag"]:.4f} | {BAND_TEXT["flag"]} |
| review | in between | {BAND_TEXT["review"]} |
| clear | p < {min(th["clear"], th["flag"]):.4f} | {BAND_TEXT["clear"]} |

In cxrlabel the score also orders the crowd's work queue and sends crowd/model disagreements
to expert review (docs/model.md).

## Not for

- Diagnosis, or ruling pneumonia out: "clear" lowers priority, it never replaces a read.
  **This is not a medical device** and has no regulatory clearance.
- Adults, older children, lateral views, CT, or findings other than pneumonia (effusion,
  pneumothorax, foreign bodies, tubes and lines are all outside its training).
- Other hospitals or scanners without a local validation: every training image comes from one
  hospital (Guangzhou Women and Children's Medical Center), mostly anterior-posterior views.
- Telling bacterial from viral pneumonia.

## Training data and labels

Export: `{tr["dataset_dir"]}`. Images per split: {tr["n_images"]}.
{_label_source(dataset_dir)}

{_label_summary(dataset_dir)}

{_readme_quality(dataset_dir)}

## Model and training

A {len(meta["widths"])}-stage CNN (widths {meta["widths"]}, ~0.3 M parameters) trained from
{_start(tr)} on grayscale images squashed to {meta["squash_side"]} px and downscaled to
{meta["input_size"]} px (the squash matches how the official val/test copies were made).
Augmentation: rotation +/- {tr["augment"]["max_rotation_deg"]} deg, shift +/-
{tr["augment"]["max_shift"]:.0%}, zoom {tr["augment"]["scale_range"]}, gamma, contrast,
brightness, noise{_blur(tr["augment"])}; no horizontal flip (the heart is on the left).
One-cycle learning-rate schedule of {tr["config"]["max_epochs"]} epochs: {tr["stop_reason"]};
{_kept(meta)};
{tr["seconds"] / 60:.1f} min on {tr["device"]} ({tr["torch_threads"]} threads), seed
{tr["config"]["seed"]}.

## Calibration and operating points

Temperature scaling on validation: fitted T = {meta["temperature_fit"]:.3f}, used
T = {meta["temperature"]:.3f} (never below 1: a split carved from the training folders is
easier than new data, so sharpening on it would add overconfidence).

| operating point | target on validation | point estimate | bootstrap 5-50-95 % | stored |
|---|---|---|---|---|
| flag | sensitivity >= {ops["min_sensitivity"]} | {ops["flag"]["point"]:.4f} | \
{ops["flag"]["q05"]:.4f} / {ops["flag"]["q50"]:.4f} / {ops["flag"]["q95"]:.4f} | \
**{ops["flag"]["chosen"]:.4f}** |
| clear | NPV >= {ops["min_npv"]} | {ops["clear"]["point"]:.4f} | \
{ops["clear"]["q05"]:.4f} / {ops["clear"]["q50"]:.4f} / {ops["clear"]["q95"]:.4f} | \
**{ops["clear"]["chosen"]:.4f}** |

{_seed_spread(meta)}

Stored thresholds are the lower 5 % of 500 patient-grouped bootstrap resamples of validation
(lower is safer for both). NPV depends on prevalence: it was set at the validation split's
pneumonia share; where pneumonia is rarer NPV is higher, where it is commoner, lower.

## Metrics

{_metrics_table(evaluation)}

{new_patient_section(meta)}

{
        "Test figures were computed once, after the thresholds were fixed."
        if has_test
        else "The export has no test split: the figures above are validation figures, which "
        "overstate performance on new data."
    }
95 % intervals: patient-grouped bootstrap (1,000 resamples). ONNX Runtime vs PyTorch: largest
probability difference {_fmt(meta.get("onnx_parity_max_abs_diff"), 7)}.

![training curve and reliability](training.png)

## Limits

- One hospital, one age range, mostly AP views, two classes: performance elsewhere is unknown.
- Validation drawn from the training folders is easier than new data. On the Kermany data a
  model like this one scores about 0.999 AUC on such a split but about 0.95-0.97 on the
  independent test images, and a threshold set for 95 % sensitivity kept only 40-70 %
  specificity there. Expect the flag band to hold more normal children than the figures above
  suggest, and re-check the bands on local data before use.
- Where labels come from a crowd, the model cannot be more right than its labels on average.
- Heatmaps (class activation maps) show where the network found evidence, not a lesion outline.
"""
    path = model_dir / CARD_FILE
    path.write_text(card, encoding="utf-8")
    return path

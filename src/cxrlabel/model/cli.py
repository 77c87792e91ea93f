"""``cxrlabel train | predict | score | site-check``. PyTorch is imported only inside ``train``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cxrlabel.context import app_context, console, fail
from cxrlabel.vocab import NORMAL, PNEUMONIA

# Escaped: fail() prints Rich markup, which would swallow a bare "[model]".
INSTALL_HINT = "install the optional extra: pip install 'cxrlabel[model]'"


def train(
    dataset_dir: Path = typer.Argument(
        ..., help="Export folder (cxrlabel export --format imagefolder) with metadata.csv."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Model folder to write."),
    size: int = typer.Option(128, help="Input side in pixels (images are squashed square)."),
    epochs: int = typer.Option(
        20, help="Epochs of the one-cycle schedule (shortened to anneal within --max-minutes)."
    ),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(2e-3, help="Peak learning rate (one-cycle schedule)."),
    patience: int = typer.Option(
        0,
        help="Stop after this many epochs without a better validation loss; 0 = run the "
        "whole schedule (default: stopping mid-cycle keeps an un-annealed model).",
    ),
    seed: int = typer.Option(0, help="Seed for weights, shuffling and augmentation."),
    threads: int = typer.Option(None, help="CPU threads for PyTorch \\[default: all]."),
    max_minutes: float = typer.Option(25.0, help="Wall-clock budget, decoding included."),
    min_sensitivity: float = typer.Option(0.95, help="Flag band: sensitivity on validation."),
    min_npv: float = typer.Option(0.97, help="Clear band: negative predictive value."),
    augment: str = typer.Option(
        "default",
        help="Augmentation preset: default, or strong "
        "(wider geometry/exposure plus blur; docs/model.md).",
    ),
    pretrain_epochs: int = typer.Option(
        0,
        min=0,
        help="Epochs of self-supervised pre-training (SimCLR) on the train images before the "
        "members; 0 = start from random weights (docs/model.md).",
    ),
    average_last: float = typer.Option(
        0.0,
        min=0.0,
        max=1.0,
        help="Share of the schedule, at its end, whose weights are averaged step by step "
        "(stochastic weight averaging); 0 = keep the epoch with the best validation loss.",
    ),
    ensemble: int = typer.Option(
        3,
        min=1,
        max=8,
        help="Models trained with seeds seed, "
        "seed+1, ... and averaged into one ONNX file; they share "
        "the time budget.",
    ),
) -> None:
    """Train the triage CNN from an export's soft labels; calibrate; export ONNX; model card."""
    if augment not in ("default", "strong"):
        fail(f"--augment must be default or strong, not {augment!r}")
    try:
        from cxrlabel.model.augment import AugmentConfig
        from cxrlabel.model.data import DatasetError
        from cxrlabel.model.train import TrainConfig
        from cxrlabel.model.train import train as run_training
    except ImportError as exc:
        fail(f"training needs PyTorch ({exc.name} missing): {INSTALL_HINT}")
    cfg = TrainConfig(
        size=size,
        max_epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        threads=threads,
        max_minutes=max_minutes,
        min_sensitivity=min_sensitivity,
        min_npv=min_npv,
        ensemble=ensemble,
        pretrain_epochs=pretrain_epochs,
        average_last=average_last,
        augment=AugmentConfig.strong() if augment == "strong" else AugmentConfig(),
    )
    try:
        result = run_training(dataset_dir, output, cfg, console)
    except DatasetError as exc:
        fail(str(exc))
    th, m = result.meta["thresholds"], result.meta["metrics"]
    console.print(
        f"model written to {output}: flag at p >= {th['flag']:.4f}, clear below {th['clear']:.4f}"
    )
    for split, figures in m.items():
        console.print(
            f"  {split}: AUC {figures['auc']:.4f} "
            f"[{figures['auc_ci'][0]:.4f}, {figures['auc_ci'][1]:.4f}], "
            f"flag sensitivity {figures['flag_sensitivity']:.3f}, "
            f"specificity {figures['flag_specificity']:.3f}"
        )


def _open_model(model_dir: Path, threads: int | None):
    from cxrlabel.model.infer import ModelUnavailable, OnnxModel

    try:
        return OnnxModel(model_dir, threads=threads)
    except ModelUnavailable as exc:
        fail(escape(str(exc)))


def predict(
    paths: list[Path] = typer.Argument(
        ...,
        exists=True,
        help="Image files or folders (searched recursively for .png .jpg .jpeg .dcm .dicom).",
    ),
    model_dir: Path = typer.Option(..., "--model", help="Model folder from `cxrlabel train`."),
    output: Path = typer.Option(Path("preds.csv"), "-o", "--output", help="CSV to write."),
    heatmaps: Path = typer.Option(None, "--heatmaps", help="Write one heatmap PNG per image."),
    threads: int = typer.Option(None, help="CPU threads for ONNX Runtime \\[default: all]."),
) -> None:
    """Score X-rays with ONNX Runtime (no PyTorch needed): p_pneumonia and a triage band."""
    from rich.progress import Progress

    from cxrlabel.model.data import find_images
    from cxrlabel.model.infer import predict_paths, write_csv

    model = _open_model(model_dir, threads)
    for problem in model.meta.get("warnings", []):
        console.print(f"[yellow]warning: this model's training reported: {escape(problem)}[/]")
    files = find_images(paths)
    if not files:
        fail("no image files found in the given paths")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("predicting", total=len(files))
        preds = predict_paths(model, files, heatmaps, on_done=lambda: progress.advance(task))
    write_csv(preds, output)
    bands = {b: sum(p.band == b for p in preds) for b in ("flag", "review", "clear")}
    errors = sum(p.error is not None for p in preds)
    console.print(
        f"{len(preds)} images -> {output}: flag {bands['flag']}, review "
        f"{bands['review']}, clear {bands['clear']}, could not read {errors}"
    )
    if errors:
        console.print(
            "[yellow]unreadable inputs are listed with their reason in the `error` column[/]"
        )


def score(
    ctx: typer.Context,
    model_dir: Path = typer.Option(..., "--model", help="Model folder from `cxrlabel train`."),
    job: str = typer.Option(None, "--job", help="Job name \\[default: the bundled job]."),
    only_missing: bool = typer.Option(False, help="Score only images without a score."),
) -> None:
    """Write Image.model_score (p_pneumonia) for a job's images, from their renditions."""
    from rich.progress import Progress

    from cxrlabel.context import get_job
    from cxrlabel.model.scoring import count_images, score_job

    app = app_context(ctx)
    model = _open_model(model_dir, None)
    with app.db.session() as session:
        job_row, _ = get_job(session, job)
        total = count_images(session, job_row.id)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"scoring {job_row.name}", total=total)
            report = score_job(
                session,
                job_row.id,
                model,
                app.settings.data_dir,
                on_done=lambda n: progress.advance(task, n),
                only_missing=only_missing,
            )
    console.print(
        f"scored {report.scored} images of job {job_row.name}; "
        f"{len(report.failed)} could not be read"
    )
    for public_id, reason in list(report.failed.items())[:20]:
        console.print(f"  {public_id}: {reason}")


MAX_LISTED = 10  # problems named one by one before "and N more"


def site_check(
    truth: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="CSV of the site's expert-read images: file, label (NORMAL or PNEUMONIA), "
        "optional patient_id; files relative to the CSV's folder.",
    ),
    model_dir: Path = typer.Option(..., "--model", help="Model folder from `cxrlabel train`."),
    output: Path = typer.Option(None, "-o", "--output", help="Also write the figures as JSON."),
    threads: int = typer.Option(None, help="CPU threads for ONNX Runtime \\[default: all]."),
    adopt_into: Path = typer.Option(
        None,
        "--adopt-into",
        help="Write a copy of the model with the thresholds this sample chooses (a new "
        "folder; the original is left as it is). Needs at least 30 images of each class.",
    ),
) -> None:
    """Do the model's flag/clear bands hold at this site? Checked on its expert-read images."""
    import numpy as np

    from cxrlabel.model.infer import predict_paths
    from cxrlabel.model.sitecheck import check_site

    rows = _read_truth(truth)
    model = _open_model(model_dir, threads)
    preds = predict_paths(model, [path for path, _, _ in rows])
    unreadable = [(p.file, p.error) for p in preds if p.error is not None]
    for file, error in unreadable[:MAX_LISTED]:
        console.print(f"[yellow]left out, could not read {escape(file)}: {escape(str(error))}[/]")
    kept = [(row, pred) for row, pred in zip(rows, preds, strict=True) if pred.error is None]
    if not kept:
        fail("none of the listed images could be read")
    ops = model.meta.get("operating_points") or {"min_sensitivity": 0.95, "min_npv": 0.97}
    check = check_site(
        np.array([label == PNEUMONIA for (_, label, _), _ in kept], dtype=int),
        np.array([pred.p_pneumonia for _, pred in kept], dtype=float),
        np.array([patient for (_, _, patient), _ in kept]),
        model.flag_at,
        model.clear_below,
        float(ops["min_sensitivity"]),
        float(ops["min_npv"]),
    )
    _print(check, len(unreadable))
    if output is not None:
        report = check.to_dict() | {"model": str(model_dir), "truth": str(truth)}
        output.write_text(json.dumps(report | {"unreadable": len(unreadable)}, indent=2) + "\n")
    if adopt_into is not None:
        _adopt(model_dir, adopt_into, check, truth)
        return
    if not check.holds:
        raise typer.Exit(1)


def _adopt(model_dir: Path, target: Path, check, truth: Path) -> None:
    """A copy of the model folder with this site's thresholds (``sitecheck.adopted_meta``)."""
    import datetime
    import shutil

    from cxrlabel.model.sitecheck import adopted_meta, card_section

    if target.exists():
        fail(f"{target} already exists: give a new folder for the site's model")
    meta = json.loads((model_dir / "model.json").read_text())
    try:
        new_meta = adopted_meta(meta, check, str(truth), datetime.date.today().isoformat())
    except ValueError as exc:
        fail(f"not adopted: {exc}")
    shutil.copytree(model_dir, target)
    (target / "model.json").write_text(json.dumps(new_meta, indent=2) + "\n")
    card = target / "MODEL_CARD.md"
    if card.is_file():
        card.write_text(card.read_text() + card_section(new_meta["site_calibration"]))
    chosen = new_meta["thresholds"]
    console.print(
        f"[green]adopted into {escape(str(target))}:[/] flag p >= {chosen['flag']:.3f} "
        f"(was {check.flag_at:.3f}), clear p < {chosen['clear']:.3f} (was "
        f"{check.clear_below:.3f}); chosen on this sample, so check them on a fresh one"
    )


def _read_truth(path: Path) -> list[tuple[Path, str, str]]:
    """(image path, label, patient) per row; every problem of the file listed at once."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            fail(
                f"{path}: needs the columns file and label (missing: {', '.join(sorted(missing))})"
            )
        rows, problems = [], []
        for line, row in enumerate(reader, start=2):
            file, label = (row.get("file") or "").strip(), (row.get("label") or "").strip().upper()
            image = (path.parent / file).resolve()
            if label not in (NORMAL, PNEUMONIA):
                problems.append(f"line {line}: label {label!r} is not NORMAL or PNEUMONIA")
            elif not file or not image.is_file():
                problems.append(f"line {line}: no image file {file!r}")
            else:
                rows.append((image, label, (row.get("patient_id") or "").strip() or str(image)))
    if problems:
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        fail(f"{path}: " + "; ".join(problems[:MAX_LISTED]) + more)
    if not rows:
        fail(f"{path}: no rows")
    return rows


def _print(check, unreadable: int) -> None:
    table = Table(title=f"Site check on {check.n} images ({check.n_pneumonia} pneumonia)")
    for column in ("", "here [95 % CI]", "target"):
        table.add_column(column)
    table.add_row("AUC", f"{check.auc:.3f} {_ci(check.auc_ci)}", "")
    table.add_row(
        f"flag (p >= {check.flag_at:.3f}) sensitivity",
        f"{check.flag_sensitivity:.3f} {_ci(check.flag_sensitivity_ci)}",
        f">= {check.min_sensitivity:.2f}",
    )
    table.add_row("flag specificity", f"{check.flag_specificity:.3f}", "")
    table.add_row(
        f"clear (p < {check.clear_below:.3f}) NPV",
        f"{check.clear_npv:.3f} {_ci(check.clear_npv_ci)}",
        f">= {check.min_npv:.2f}",
    )
    table.add_row("share cleared", f"{check.share_clear:.3f}", "")
    console.print(table)
    if unreadable:
        console.print(
            f"[yellow]{unreadable} listed image(s) could not be read and were left out[/]"
        )
    for problem in check.problems:
        console.print(f"[red]does not hold:[/] {escape(problem)}")
    if check.holds:
        console.print("[green]the stored bands met both targets on this site's sample[/]")


def _ci(bounds: list[float]) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("predict")(predict)
    app.command("score")(score)
    app.command("site-check")(site_check)

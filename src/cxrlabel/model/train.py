"""Training a TriageNet from an export: soft labels, augmentation, early stopping, calibration.

The steps, in order: read ``metadata.csv``; decode and squash every image once (kept in memory
as uint8, ~80 MB for 5,000 images at 128 px); train on the ``train`` split with the crowd's
``p_PNEUMONIA`` as a soft target; stop early on the validation loss; fit the temperature and the
two operating points on ``validation``; only then look at ``test`` (if the export has one);
export ONNX and check that both runtimes agree; write the model card.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cxrlabel import __version__
from cxrlabel.model import calibrate, health, metrics
from cxrlabel.model.augment import AugmentConfig, augment
from cxrlabel.model.averaging import WeightAverage
from cxrlabel.model.data import (
    INPUT_MEAN,
    INPUT_STD,
    SQUASH_SIDE,
    DatasetError,
    Example,
    load_batch,
    read_export,
)
from cxrlabel.model.infer import MODEL_JSON, ONNX_FILE
from cxrlabel.model.net import DEFAULT_WIDTHS, SeedEnsemble, TriageNet, build
from cxrlabel.model.schedule import OneCyclePlan, another_member_fits, fit_plan_to_budget
from cxrlabel.model.tensors import (
    normalise,
    to_tensor,
    torch_logits,
)
from cxrlabel.vocab import PNEUMONIA

TORCH_WEIGHTS = "model.pt"


@dataclass
class TrainConfig:
    size: int = 128
    max_epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # Epochs without a better validation loss before stopping; 0 = run the whole schedule.
    # Off by default: mid-cycle the learning rate is high and the validation loss swings
    # (0.15 -> 1.38 -> 0.15 in consecutive epochs on Kermany), so patience 4 stopped runs after
    # 6-17 epochs with un-annealed models: new-patient AUC 0.88-0.97 by seed instead of
    # 0.973-0.975 for the full schedule (issue 21, docs/model.md).
    patience: int = 0
    seed: int = 0
    threads: int | None = None  # CPU threads for PyTorch; None = PyTorch's default
    max_minutes: float = 25.0  # wall-clock budget, decoding included
    # Optional budget in CPU-minutes of this process (all threads): on a shared machine it
    # measures the work done, whatever the other tenants take.
    max_cpu_minutes: float | None = None
    # Models trained with seeds seed, seed+1, ... on the same split and averaged (one ONNX):
    # steadier ranking and thresholds than any one seed (issue 21, docs/model.md).
    ensemble: int = 3
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    min_sensitivity: float = 0.95
    min_npv: float = 0.97
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Epochs of self-supervised pre-training (model/pretrain.py) on the train images before
    # the members; 0 = members start from random weights. Off by default: on the internal
    # new-patient shift one pre-trained start helped every seed, but pre-training inside each
    # run (as ``train`` does) read no better than random weights (docs/model.md).
    pretrain_epochs: int = 0
    # Share of the time budget pre-training may use (its schedule anneals within it).
    pretrain_budget_share: float = 0.3
    # Share of the schedule, at its end, whose weights are averaged step by step
    # (model/averaging.py); 0 = keep the epoch with the best validation loss.
    average_last: float = 0.0
    # Weigh the classes equally in the loss (pneumonia outnumbers normal 3:1 in Kermany).
    balance_classes: bool = False


@dataclass
class Split:
    examples: list[Example]
    pixels: np.ndarray  # (N, S, S) uint8

    @property
    def soft(self) -> np.ndarray:
        return np.array([e.p_pneumonia for e in self.examples], dtype=np.float32)

    @property
    def calibration_target(self) -> np.ndarray:
        """Expert labels where the export has them, else the crowd's soft label."""
        return np.array(
            [
                float(e.reference_label == PNEUMONIA) if e.reference_label else e.p_pneumonia
                for e in self.examples
            ]
        )

    @property
    def y(self) -> np.ndarray:
        return np.array([e.evaluation_target for e in self.examples], dtype=int)

    @property
    def groups(self) -> np.ndarray:
        return np.array([e.patient_id for e in self.examples])


def carve_validation(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """Move whole patients from train to validation when an export has no validation rows."""
    from dataclasses import replace

    patients = sorted({e.patient_id for e in examples if e.split == "train"})
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(patients, size=max(1, round(len(patients) * fraction)), replace=False))
    return [
        replace(e, split="validation") if e.split == "train" and e.patient_id in chosen else e
        for e in examples
    ]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


def load_splits(dataset_dir: Path, size: int, seed: int, console: Console) -> dict[str, Split]:
    examples = read_export(dataset_dir)
    if not any(e.split == "validation" for e in examples):
        console.print("no validation rows in the export: carving 15 % of patients from train")
        examples = carve_validation(examples, 0.15, seed)
    by_split = {s: [e for e in examples if e.split == s] for s in ("train", "validation", "test")}
    refusal = health.size_refusal(len(by_split["train"]), len(by_split["validation"]))
    if refusal:
        raise DatasetError(refusal)
    for name in ("train", "validation"):
        targets = {e.evaluation_target for e in by_split[name]}
        if targets != {0, 1}:
            raise DatasetError(f"the {name} split needs images of both classes")
    splits: dict[str, Split] = {}
    with _progress(console) as progress:
        for name, items in by_split.items():
            if not items:
                continue
            task = progress.add_task(f"decoding {name}", total=len(items), info="")
            pixels = load_batch(
                [e.path for e in items], size, on_done=partial(progress.advance, task)
            )
            splits[name] = Split(items, pixels)
    return splits


def _train_epoch(
    model: TriageNet,
    optimiser: torch.optim.Optimizer,
    plan: OneCyclePlan,
    data: Split,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    progress: Progress,
    task,
    average: WeightAverage | None = None,
) -> float:
    model.train()
    order = torch.randperm(len(data.pixels), generator=gen).numpy()
    soft = torch.from_numpy(data.soft)
    # Balanced: a film of the rarer class weighs as much in the loss as the other class.
    pos_weight = ((1 - soft).sum() / soft.sum()).to(device) if cfg.balance_classes else None
    total, seen = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        x = augment(to_tensor(data.pixels[idx], device), cfg.augment, gen)
        logit, _ = model(normalise(x))
        # Soft targets: BCE against the crowd's probability, so an image the crowd was unsure
        # about pulls the model less hard than a unanimous one.
        loss = F.binary_cross_entropy_with_logits(
            logit, soft[idx].to(device), pos_weight=pos_weight
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        plan.step()
        if average is not None:
            average.after_step(model, plan)
        total, seen = total + loss.item() * len(idx), seen + len(idx)
        progress.update(task, advance=len(idx), info=f"loss {total / seen:.4f}")
    return total / max(seen, 1)


def _validation_loss(logits: np.ndarray, target: np.ndarray) -> float:
    z = logits.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - target * z))


def fit(
    splits: dict[str, Split],
    cfg: TrainConfig,
    device: torch.device,
    console: Console,
    started: float,
    features: dict[str, torch.Tensor] | None = None,
) -> tuple[TriageNet, list[dict], str]:
    """The best model by validation loss, the per-epoch history and why training stopped.
    ``features``: pre-trained weights of the feature stack to start from (``pretrain``)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = TriageNet(cfg.widths)
    if features is not None:
        model.features.load_state_dict(features)
    model = model.to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train, val = splits["train"], splits["validation"]
    plan = OneCyclePlan(
        optimiser, cfg.lr, cfg.max_epochs, math.ceil(len(train.pixels) / cfg.batch_size)
    )
    best_loss, best_state, history, stop = math.inf, None, [], "learning-rate schedule completed"
    bad_epochs, cpu_at_start = 0, time.process_time()
    average = WeightAverage(model, cfg.average_last) if cfg.average_last else None
    with _progress(console) as progress:
        epochs = progress.add_task("epochs", total=cfg.max_epochs, info="")
        for epoch in range(1, cfg.max_epochs + 1):
            t0 = time.monotonic()
            task = progress.add_task(f"epoch {epoch}", total=len(train.pixels), info="")
            train_loss = _train_epoch(
                model, optimiser, plan, train, cfg, gen, device, progress, task, average
            )
            progress.remove_task(task)
            logits, _ = torch_logits(model, val.pixels, device)
            val_loss = _validation_loss(logits, val.calibration_target)
            val_auc = metrics.roc_auc(val.y, logits)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_auc": val_auc,
                    "seconds": time.monotonic() - t0,
                }
            )
            if val_loss < best_loss:
                best_loss, bad_epochs = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            # A line per epoch too: it stays in logs, where a live bar is not drawn.
            progress.console.print(
                f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"val AUC {val_auc:.4f}, {history[-1]['seconds']:.0f} s"
            )
            progress.update(
                epochs,
                advance=1,
                info=f"val loss {val_loss:.4f} AUC {val_auc:.4f} (best {best_loss:.4f})",
            )
            if cfg.patience and bad_epochs >= cfg.patience:
                stop = f"early stop: no better validation loss for {cfg.patience} epochs"
                break
            elapsed = time.monotonic() - started
            if elapsed + history[-1]["seconds"] > cfg.max_minutes * 60:
                stop = f"time budget of {cfg.max_minutes:g} min reached"
                break
            if fit_plan_to_budget(plan, epoch, cfg.max_minutes * 60 - elapsed, history):
                progress.console.print(
                    f"time budget: the learning rate now anneals by epoch {plan.epochs}"
                )
                progress.update(epochs, total=plan.epochs)
            if epoch >= plan.epochs:
                if plan.epochs < cfg.max_epochs:
                    stop = f"schedule shortened to {plan.epochs} epochs to fit the time budget"
                break
            cpu_used = time.process_time()
            if (
                cfg.max_cpu_minutes
                and cpu_used + (cpu_used - cpu_at_start) / epoch > cfg.max_cpu_minutes * 60
            ):
                stop = f"CPU budget of {cfg.max_cpu_minutes:g} CPU-min reached"
                break
    if average is not None and average.steps_averaged:
        return _averaged(model, average, splits, device, console), history, stop
    model.load_state_dict(best_state)
    return model.eval(), history, stop


def _averaged(
    model: TriageNet,
    average: WeightAverage,
    splits: dict[str, Split],
    device: torch.device,
    console: Console,
) -> TriageNet:
    model = average.result(model, splits["train"].pixels, device)
    val = splits["validation"]
    logits, _ = torch_logits(model, val.pixels, device)
    console.print(
        f"weights averaged over {average.steps_averaged} steps: val loss "
        f"{_validation_loss(logits, val.calibration_target):.4f}, "
        f"val AUC {metrics.roc_auc(val.y, logits):.4f}"
    )
    return model


def onnx_metadata(meta: dict) -> dict[str, str]:
    """What a consumer of ``model.onnx`` alone needs: preprocessing, temperature, thresholds.

    ONNX ``metadata_props`` are string pairs; nested values are JSON. ONNX Runtime reads them
    with ``session.get_modelmeta().custom_metadata_map``.
    """
    preprocessing = {
        "grayscale": True,
        "squash_to": meta["squash_side"],
        "resize_to": meta["input_size"],
        "scale": "x / 255",
        "mean": meta["input_mean"],
        "std": meta["input_std"],
        "layout": "N,1,S,S float32",
    }
    return {
        "cxrlabel_version": meta["cxrlabel_version"],
        "temperature": repr(float(meta["temperature"])),
        "thresholds": json.dumps(meta["thresholds"]),
        "preprocessing": json.dumps(preprocessing),
        "output": "p_pneumonia = sigmoid(logit / temperature); band flag if p >= flag, "
        "clear if p < clear, else review",
        "warnings": json.dumps(meta.get("warnings", [])),
    }


def fit_members(
    splits: dict[str, Split],
    cfg: TrainConfig,
    device: torch.device,
    console: Console,
    started: float,
    features: dict[str, torch.Tensor] | None = None,
) -> tuple[TriageNet | SeedEnsemble, list[dict], str, dict]:
    """``fit`` once per ensemble member (seeds seed, seed+1, ...), sharing the time budget,
    each starting from the pre-trained ``features`` when given.

    Returns the model, the first member's history, the last stop reason and the spread of
    each member's own temperature and flag/clear thresholds on validation (how much a
    threshold moves with the seed alone).
    """
    n = max(1, cfg.ensemble)
    members: list[TriageNet] = []
    history: list[dict[str, float]] = []
    stop = ""
    spread: dict[str, list[float]] = {"temperature": [], "flag": [], "clear": []}
    val = splits["validation"]
    slowest_member = 0.0
    for k in range(n):
        if k and not another_member_fits(
            time.monotonic() - started, slowest_member, cfg.max_minutes * 60
        ):
            console.print(
                f"[yellow]ensemble of {k}, not {n}: another full-length member would not fit "
                f"the {cfg.max_minutes:g}-minute budget (members are never shortened to make "
                "room: a full schedule matters more than one more seed)[/]"
            )
            break
        budget = replace(cfg, seed=cfg.seed + k)  # the budget's deadline is the whole run's
        if n > 1:
            console.print(f"ensemble member {k + 1}/{n}, seed {budget.seed}")
        member_started = time.monotonic()
        member, member_history, stop = fit(splits, budget, device, console, started, features)
        slowest_member = max(slowest_member, time.monotonic() - member_started)
        members.append(member)
        history = history or member_history
        logits, _ = torch_logits(member, val.pixels, device)
        temperature, _ = calibrate.fit_temperature(logits, val.calibration_target)
        ops = calibrate.choose_operating_points(
            val.y,
            calibrate.sigmoid(logits / temperature),
            val.groups,
            cfg.min_sensitivity,
            cfg.min_npv,
            n_boot=100,
            seed=budget.seed,
        )
        spread["temperature"].append(temperature)
        spread["flag"].append(ops.flag.chosen)
        spread["clear"].append(ops.clear.chosen)
    model = members[0] if len(members) == 1 else SeedEnsemble(members).eval()
    return model, history, stop, spread


def pretrain(
    pixels: np.ndarray, cfg: TrainConfig, device: torch.device, console: Console
) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, float]]]:
    """Pre-trained feature weights for every member and the loss per epoch (None and [] when
    ``pretrain_epochs`` is 0)."""
    if cfg.pretrain_epochs <= 0:
        return None, []
    from cxrlabel.model.pretrain import pretrain_features

    with _progress(console) as progress:
        features, history = pretrain_features(
            pixels,
            cfg.widths,
            cfg.pretrain_epochs,
            cfg.seed,
            device,
            progress,
            cfg.max_minutes * 60 * cfg.pretrain_budget_share,
        )
    console.print(
        f"pre-training: {len(history)} epochs, SimCLR loss {history[0]['loss']:.3f} -> "
        f"{history[-1]['loss']:.3f}, {sum(h['seconds'] for h in history) / 60:.1f} min"
    )
    return features, history


def export_onnx(
    model: TriageNet, size: int, path: Path, metadata: dict[str, str] | None = None
) -> None:
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of one that needs onnxscript; ours
        # is a plain feed-forward graph, which the TorchScript exporter handles exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, size, size),),
            str(path),
            input_names=["image"],
            output_names=["logit", "cam"],
            dynamic_axes={"image": {0: "n"}, "logit": {0: "n"}, "cam": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    if metadata:
        import onnx

        proto = onnx.load(str(path))
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainResult:
    model_dir: Path
    meta: dict
    history: list[dict]


def train(
    dataset_dir: Path,
    model_dir: Path,
    cfg: TrainConfig | None = None,
    console: Console | None = None,
) -> TrainResult:
    cfg = cfg or TrainConfig()
    console = console or Console()
    started = time.monotonic()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    np.random.seed(cfg.seed)
    device = pick_device()
    console.print(
        f"training on {device} ({torch.get_num_threads()} CPU threads), "
        f"{cfg.size} px, seed {cfg.seed}"
    )
    splits = load_splits(Path(dataset_dir), cfg.size, cfg.seed, console)
    features, pretrain_history = pretrain(splits["train"].pixels, cfg, device, console)
    model, history, stop, seed_spread = fit_members(splits, cfg, device, console, started, features)
    train_seconds = time.monotonic() - started
    cpu_seconds = time.process_time()
    console.print(f"{stop} after {len(history)} epochs, {train_seconds / 60:.1f} min")

    val = splits["validation"]
    val_logits, _ = torch_logits(model, val.pixels, device)
    temperature, temperature_fit = calibrate.fit_temperature(val_logits, val.calibration_target)
    val_p = calibrate.sigmoid(val_logits / temperature)
    ops = calibrate.choose_operating_points(
        val.y, val_p, val.groups, cfg.min_sensitivity, cfg.min_npv, seed=cfg.seed
    )
    flag_at, clear_below = ops.flag.chosen, ops.clear.chosen
    problems = health.size_warnings(len(splits["train"].examples), len(val.examples))
    problems += health.calibration_warnings(temperature_fit, val_p, flag_at, clear_below)
    for problem in problems:
        console.print(f"[yellow]warning: {problem}[/]")
    evaluation = {"validation": metrics.evaluate(val.y, val_p, val.groups, flag_at, clear_below)}
    # Thresholds are fixed above; only now is the test split scored.
    if "test" in splits:
        test = splits["test"]
        test_logits, _ = torch_logits(model, test.pixels, device)
        test_p = calibrate.sigmoid(test_logits / temperature)
        evaluation["test"] = metrics.evaluate(test.y, test_p, test.groups, flag_at, clear_below)

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    torch.save(model.state_dict(), model_dir / TORCH_WEIGHTS)
    # TriageNet only: a seed ensemble's graph is the members' mean, see net.SeedEnsemble.
    meta = {
        "format": 1,
        "cxrlabel_version": __version__,
        "arch": "TriageNet",
        "widths": list(cfg.widths),
        "ensemble": len(model.members) if isinstance(model, SeedEnsemble) else 1,
        "seed_spread": seed_spread,
        "input_size": cfg.size,
        "squash_side": SQUASH_SIDE,
        "input_mean": INPUT_MEAN,
        "input_std": INPUT_STD,
        "temperature": temperature,
        "temperature_fit": temperature_fit,
        "thresholds": {"flag": flag_at, "clear": clear_below},
        "operating_points": ops.to_dict(),
        "training": {
            "dataset_dir": str(Path(dataset_dir).resolve()),
            "config": {k: v for k, v in asdict(cfg).items() if k != "augment"},
            "augment": asdict(cfg.augment),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "epochs_run": len(history),
            "best_epoch": int(np.argmin([h["val_loss"] for h in history])) + 1,
            "stop_reason": stop,
            "seconds": train_seconds,
            "cpu_seconds": cpu_seconds,
            "n_images": {name: len(s.examples) for name, s in splits.items()},
            "pretrain": pretrain_history,  # SimCLR loss per epoch; [] = random initial weights
        },
        "history": history,
        "metrics": evaluation,
        "warnings": problems,
    }
    export_onnx(model, cfg.size, model_dir / ONNX_FILE, onnx_metadata(meta))
    meta["onnx_parity_max_abs_diff"] = _onnx_parity(model_dir, meta, val.pixels[:32])
    (model_dir / MODEL_JSON).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    from cxrlabel.model.card import write_card, write_plots

    write_plots(model_dir, history, val.y, val_p)
    write_card(model_dir, meta, Path(dataset_dir))
    return TrainResult(model_dir, meta, history)


def _onnx_parity(model_dir: Path, meta: dict, pixels: np.ndarray) -> float | None:
    """Largest |p_torch - p_onnx| over a few validation images (None without onnxruntime)."""
    try:
        from cxrlabel.model.infer import OnnxModel
    except ImportError:
        return None
    model = build(tuple(meta["widths"]), meta.get("ensemble", 1))
    model.load_state_dict(torch.load(model_dir / TORCH_WEIGHTS, weights_only=True))
    logits, _ = torch_logits(model, pixels, torch.device("cpu"))
    p_torch = calibrate.sigmoid(logits / meta["temperature"])
    p_onnx, _ = OnnxModel(model_dir, meta=meta).probabilities(pixels)
    return float(np.max(np.abs(p_torch - p_onnx)))

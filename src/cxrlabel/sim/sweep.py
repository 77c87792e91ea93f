"""Job-design sweep: simulate several job settings against several crowds, find the
accuracy-vs-cost Pareto front and recommend a setting.

Affordable on a small machine: the images are ingested once into a template SQLite database
(with its gold bank and the difficulty model); each run copies that file, writes its settings
into the job (and sets each open image's ``judgment_target`` to the setting's minimum, which is
what ingesting under that setting would have done), and runs the full in-process simulation
through the real engines.

Cost per image includes the expert: ``expert_cost`` (default 1.00 per reviewed image, i.e. a
radiologist at about 180/hour reading three images a minute) so a setting cannot look cheap by
sending everything to review.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update

from cxrlabel.jobspec import JobSpec, parse_job
from cxrlabel.sim.crowd import CrowdSpec
from cxrlabel.sim.engine import DEFAULT_START, Truth
from cxrlabel.sim.prepare import ensure_gold
from cxrlabel.sim.run import SimOutcome, _simulate, gold_difficulty, job_settings, prepare_job
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, ImageStatus, Job

DEFAULT_EXPERT_COST = 1.0
DEFAULT_TARGET = 0.95


@dataclass(frozen=True)
class Setting:
    min_judgments: int = 3
    max_judgments: int = 5
    confidence_target: float = 0.8
    gold_per_page: int = 1
    min_accuracy: float = 0.75
    aggregation: str = "trust"
    # None = as the job file says (and left out of the key).
    quiz_length: int | None = None
    cant_tell_fraction: float | None = None
    # Any other job-file fields, as (dotted.key, TOML value) pairs, e.g. a model-assist option.
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        key = (
            f"j{self.min_judgments}-{self.max_judgments} c{self.confidence_target:g} "
            f"g{self.gold_per_page} a{self.min_accuracy:g} {self.aggregation}"
        )
        if self.quiz_length is not None:
            key += f" q{self.quiz_length}"
        if self.cant_tell_fraction is not None:
            key += f" ct{self.cant_tell_fraction:g}"
        return key + "".join(f" +{name}={value}" for name, value in self.overrides)


SETTING_FORMAT = (
    "min,max,confidence,gold_per_page,min_accuracy,method"
    "[,quiz_length[,cant_tell_fraction]][+section.field=TOML value...]"
)


def parse_setting(text: str) -> Setting:
    """``"2,5,0.8,1,0.65,trust"`` (optionally ``,6`` quiz length, ``,0.6`` can't-tell fraction
    for review, and ``+section.field=value`` job-file overrides) -> a Setting; ValueError with
    the expected format otherwise."""
    head, *extra = text.split("+")
    parts = [part.strip() for part in head.split(",")]
    if len(parts) not in (6, 7, 8):
        raise ValueError(f"setting {text!r}: expected {SETTING_FORMAT}")
    overrides = []
    for item in extra:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"setting {text!r}: override {item!r} is not section.field=value")
        _toml_value(value.strip())
        overrides.append((name.strip(), value.strip()))
    try:
        quiz = int(parts[6]) if len(parts) > 6 and parts[6] else None
        cant = float(parts[7]) if len(parts) > 7 and parts[7] else None
        return Setting(
            int(parts[0]),
            int(parts[1]),
            float(parts[2]),
            int(parts[3]),
            float(parts[4]),
            parts[5],
            quiz,
            cant,
            tuple(overrides),
        )
    except ValueError:
        raise ValueError(f"setting {text!r}: expected {SETTING_FORMAT}") from None


def _toml_value(text: str) -> Any:
    """A TOML value (``0.5``, ``true``, ``"model"``); a bare word counts as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text.replace("_", "").replace("-", "").isalnum():
            return text
        raise ValueError(f"{text!r} is not a TOML value") from None


def small_grid(base: Setting) -> list[Setting]:
    """Nine settings: the job as written, each knob moved on its own, and two combinations."""
    variants = [
        base,
        Setting(
            2, 4, base.confidence_target, base.gold_per_page, base.min_accuracy, base.aggregation
        ),
        Setting(
            base.min_judgments,
            7,
            base.confidence_target,
            base.gold_per_page,
            base.min_accuracy,
            base.aggregation,
        ),
        Setting(
            base.min_judgments,
            base.max_judgments,
            0.9,
            base.gold_per_page,
            base.min_accuracy,
            base.aggregation,
        ),
        Setting(
            base.min_judgments,
            base.max_judgments,
            base.confidence_target,
            2,
            base.min_accuracy,
            base.aggregation,
        ),
        Setting(
            base.min_judgments,
            base.max_judgments,
            base.confidence_target,
            base.gold_per_page,
            0.65,
            base.aggregation,
        ),
        Setting(
            base.min_judgments,
            base.max_judgments,
            base.confidence_target,
            base.gold_per_page,
            base.min_accuracy,
            "mv",
        ),
        Setting(2, 5, 0.8, base.gold_per_page, 0.65, base.aggregation),
        Setting(3, 6, 0.9, base.gold_per_page, 0.7, base.aggregation),
    ]
    return list(dict.fromkeys(variants))


def full_grid() -> list[Setting]:
    """The factorial grid (slow: 48 settings per crowd)."""
    return [
        Setting(lo, hi, c, g, a, m)
        for (lo, hi), c, g, a, m in itertools.product(
            [(2, 4), (3, 5), (3, 7)], [0.8, 0.9], [1, 2], [0.65, 0.75], ["trust", "mv"]
        )
    ]


def apply_setting(spec: JobSpec, setting: Setting) -> JobSpec:
    """The spec with the setting's knobs, validated again through the job-file parser."""
    data = spec.model_dump(exclude={"base_dir"})
    data["judgments"].update(
        min=setting.min_judgments,
        max=setting.max_judgments,
        confidence_target=setting.confidence_target,
    )
    data["gold"].update(per_page=setting.gold_per_page, min_accuracy=setting.min_accuracy)
    data["aggregation"]["method"] = setting.aggregation
    if setting.quiz_length is not None:
        data["gold"]["quiz_length"] = setting.quiz_length
    if setting.cant_tell_fraction is not None:
        data["review"]["cant_tell_fraction"] = setting.cant_tell_fraction
    for name, value in setting.overrides:
        *sections, field = name.split(".")
        table = data
        for section in sections:
            table = table.setdefault(section, {})
        table[field] = _toml_value(value)
    return parse_job(dump_toml(data), f"sweep setting {setting.key}", spec.base_dir)


def setting_of(spec: JobSpec) -> Setting:
    return Setting(
        spec.judgments.min,
        spec.judgments.max,
        spec.judgments.confidence_target,
        spec.gold.per_page,
        spec.gold.min_accuracy,
        spec.aggregation.method,
    )


@dataclass
class Template:
    path: Path
    job_id: int
    truth: Truth
    setup: dict[str, Any]


def build_template(
    spec: JobSpec,
    spec_toml: str,
    images: Path,
    folder: Path,
    *,
    limit: int | None,
    seed: int,
    gold: int | None = None,
    progress: Callable[[int], None] | None = None,
    gold_clearest: float = 1.0,
    model_scores: Path | None = None,
    sample_gold: bool = True,
) -> Template:
    """Ingest once (with gold bank and difficulty) into ``folder/template.sqlite3``;
    ``sample_gold=False`` leaves the bank empty (``with_gold`` adds one to a copy)."""
    path = folder / "template.sqlite3"
    db = Database(f"sqlite:///{path}")
    try:
        if gold is None:  # room for ~30 work pages per annotator even with 2 gold per page
            gold = spec.gold.quiz_length + 60
        job_id, truth, _difficulty, setup = prepare_job(
            db,
            spec,
            spec_toml,
            images,
            data_dir=folder,
            limit=limit,
            seed=seed,
            gold=gold,
            progress=progress,
            gold_clearest=gold_clearest,
            model_scores=model_scores,
            sample_gold=sample_gold,
        )
    finally:
        db.dispose()  # closing the last connection folds the WAL into the file
    return Template(path, job_id, truth, setup)


def with_gold(
    template: Template,
    path: Path,
    spec: JobSpec,
    *,
    n_gold: int,
    seed: int,
    gold_clearest: float = 1.0,
) -> Template:
    """A copy of a template built without gold (``sample_gold=False``) at ``path``, with a
    gold bank sampled into it: one ingest serves several gold policies."""
    shutil.copyfile(template.path, path)
    db = Database(f"sqlite:///{path}")
    try:
        with db.session() as session:
            job = session.get_one(Job, template.job_id)
        n = ensure_gold(
            db,
            job,
            spec,
            n_gold,
            seed,
            DEFAULT_START,
            clearest_fraction=gold_clearest,
            clarity=template.truth.difficulty,
        )
        mean = gold_difficulty(db, template.job_id, template.truth)
    finally:
        db.dispose()
    setup = {
        **template.setup,
        "gold_bank": n,
        "gold_clearest_fraction": gold_clearest,
        "gold_mean_difficulty": None if mean is None else round(mean, 4),
    }
    return Template(path, template.job_id, template.truth, setup)


def save_template(template: Template, params: dict[str, Any]) -> Path:
    """Keep a built template for later runs: its truth and setup beside the database
    (``<name>.json`` next to ``<name>.sqlite3``), with the parameters it was built from
    (``load_template`` only reuses an exact match)."""
    info = template.path.with_suffix(".json")
    document = {
        "params": params,
        "job_id": template.job_id,
        "setup": template.setup,
        "label": {str(k): v for k, v in template.truth.label.items()},
        "difficulty": {str(k): v for k, v in template.truth.difficulty.items()},
    }
    info.write_text(json.dumps(document, sort_keys=True) + "\n", encoding="utf-8")
    return info


def load_template(path: Path, params: dict[str, Any]) -> Template | None:
    """The template database ``path`` saved from exactly ``params``; None when there is none."""
    info = path.with_suffix(".json")
    if not (info.is_file() and path.is_file()):
        return None
    document = json.loads(info.read_text(encoding="utf-8"))
    if document.get("params") != json.loads(json.dumps(params)):
        return None
    truth = Truth(
        {int(k): v for k, v in document["label"].items()},
        {int(k): float(v) for k, v in document["difficulty"].items()},
    )
    return Template(path, int(document["job_id"]), truth, document["setup"])


def simulate_copy(
    template: Template, folder: Path, spec: JobSpec, crowd: CrowdSpec, seed: int
) -> SimOutcome:
    """One simulated job on a fresh copy of the template database."""
    copy = Path(tempfile.mkdtemp(prefix="run-", dir=folder)) / "run.sqlite3"
    shutil.copyfile(template.path, copy)
    wal = template.path.with_name(template.path.name + "-wal")
    if wal.exists() and wal.stat().st_size:  # not folded in (another reader held it open)
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
    db = Database(f"sqlite:///{copy}")
    try:
        with db.session() as session:
            job = session.get_one(Job, template.job_id)
            job.spec_toml = dump_toml(spec.model_dump(exclude={"base_dir"}))
            session.execute(
                update(Image)
                .where(Image.job_id == template.job_id, Image.status == ImageStatus.NEEDS_JUDGMENTS)
                .values(judgment_target=spec.judgments.min)
            )
        return _simulate(db, template.job_id, spec, crowd, template.truth, seed=seed)
    finally:
        db.dispose()
        shutil.rmtree(copy.parent, ignore_errors=True)


def run_one(
    template: Template,
    folder: Path,
    spec: JobSpec,
    crowd: CrowdSpec,
    seed: int,
    expert_cost: float,
    key: str | None = None,
) -> dict[str, Any]:
    """One sweep row: the headline figures of one simulated job."""
    outcome = simulate_copy(template, folder, spec, crowd, seed)
    result = outcome.result
    images = result["images"] or 1
    crowd_cost = result["cost"] / images
    return {
        "setting": key or setting_of(spec).key,
        **job_settings(spec),
        "crowd": crowd.name,
        "label_accuracy": result["label_accuracy"],
        "coverage": result["coverage"],
        "judgments_per_image": result["judgments_per_image"],
        "expert_review_fraction": result["expert_review_fraction"],
        "annotators_removed": result["annotators_removed"],
        "bad_annotators_removed": result["bad_annotators_removed"],
        "removal_precision": result["removal_precision"],
        "crowd_cost_per_image": round(crowd_cost, 4),
        "crowd_cost_quiz_unpaid_per_image": round(result["cost_quiz_unpaid"] / images, 4),
        "cost_per_image": round(crowd_cost + result["expert_review_fraction"] * expert_cost, 4),
        "hours": result["hours"],
        "trusted_judgments_per_image": result["trusted_judgments_per_image"],
        "accuracy_finalised": result.get("accuracy_finalised"),
        "accuracy_expert": result.get("accuracy_expert"),
        "annotators_arrived": result["annotators_arrived"],
        "quiz_pages": result["quiz_pages"],
    }


def sweep(
    template: Template,
    folder: Path,
    spec: JobSpec,
    settings: Sequence[Setting],
    crowds: Sequence[CrowdSpec],
    *,
    seed: int = 0,
    expert_cost: float = DEFAULT_EXPERT_COST,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for setting, crowd in itertools.product(settings, crowds):
        row = run_one(
            template, folder, apply_setting(spec, setting), crowd, seed, expert_cost, setting.key
        )
        rows.append(row)
        if on_run:
            on_run(row)
    return rows


def summarise_settings(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: mean accuracy and cost over crowds, and the worst-crowd accuracy."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["setting"], []).append(row)
    out = []
    for key, group in by.items():
        accs = [r["label_accuracy"] or 0.0 for r in group]
        out.append(
            {
                "setting": key,
                **{
                    k: group[0][k]
                    for k in (
                        "min_judgments",
                        "max_judgments",
                        "confidence_target",
                        "gold_per_page",
                        "min_accuracy",
                        "aggregation",
                    )
                },
                "label_accuracy": round(sum(accs) / len(accs), 4),
                "worst_accuracy": round(min(accs), 4),
                "cost_per_image": round(sum(r["cost_per_image"] for r in group) / len(group), 4),
                "crowd_cost_per_image": round(
                    sum(r["crowd_cost_per_image"] for r in group) / len(group), 4
                ),
                "crowd_cost_quiz_unpaid_per_image": round(
                    sum(
                        r.get("crowd_cost_quiz_unpaid_per_image", r["crowd_cost_per_image"])
                        for r in group
                    )
                    / len(group),
                    4,
                ),
                "judgments_per_image": round(
                    sum(r["judgments_per_image"] or 0 for r in group) / len(group), 3
                ),
                "expert_review_fraction": round(
                    sum(r["expert_review_fraction"] or 0 for r in group) / len(group), 4
                ),
            }
        )
    return out


def pareto(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Settings no other setting beats on both accuracy (higher) and cost (lower)."""
    front = []
    for row in summary:
        dominated = any(
            other["label_accuracy"] >= row["label_accuracy"]
            and other["cost_per_image"] <= row["cost_per_image"]
            and (
                other["label_accuracy"] > row["label_accuracy"]
                or other["cost_per_image"] < row["cost_per_image"]
            )
            for other in summary
        )
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: r["cost_per_image"])


def recommend(
    summary: Sequence[dict[str, Any]], target: float = DEFAULT_TARGET
) -> tuple[dict[str, Any] | None, str]:
    """The cheapest setting whose accuracy reaches ``target`` on every crowd; else the most
    accurate one on the worst crowd."""
    if not summary:
        return None, "nothing was simulated"
    reaching = [r for r in summary if r["worst_accuracy"] >= target]
    if reaching:
        best = min(reaching, key=lambda r: (r["cost_per_image"], -r["label_accuracy"]))
        return best, (
            f"cheapest setting with >= {target:.0%} agreement on every crowd "
            f"({len(reaching)} of {len(summary)} settings reach it)"
        )
    best = max(summary, key=lambda r: (r["worst_accuracy"], -r["cost_per_image"]))
    return best, (
        f"no setting reaches {target:.0%} on every crowd; this one is the most "
        "accurate on the worst crowd"
    )


# --- a minimal TOML writer (the job spec's shapes only; tomllib has no writer) -------------------


def dump_toml(data: dict[str, Any]) -> str:
    """Top-level scalars, then one ``[section]`` per table with inline values (valid TOML for
    the job spec: inline tables and arrays of inline tables may nest)."""
    lines = [
        f"{_key(k)} = {_value(v)}"
        for k, v in data.items()
        if v is not None and not isinstance(v, dict)
    ]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.extend(["", f"[{_key(key)}]"])
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ "
            + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
            + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__} to TOML")

"""Job specification: a TOML file validated into typed, frozen pydantic models.

A bad job file must give one clear line naming the file, the field, the problem and (where the
parser knows it) the line — never a traceback. ``JobSpecError`` carries that line.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cxrlabel.config import bundled_jobs_dir
from cxrlabel.vocab import PNEUMONIA

KERMANY_PATIENT_PATTERN = (
    r"(?P<pid>person\d+)_(?:bacteria|virus)"  # person123_bacteria_456
    r"|(?P<pid2>NORMAL2-IM-\d+)-\d+"  # NORMAL2-IM-0123-0001
    r"|(?P<pid3>IM-\d+)-\d+"  # IM-0001-0001
)


class JobSpecError(ValueError):
    """A job file problem, already phrased as one line for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Strict):
    value: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=32)
    text: str
    key: str | None = Field(default=None, max_length=1)
    hint: str = ""


class CertaintyChoice(Choice):
    # How much a judgment with this certainty counts in certainty-aware aggregation (0..1).
    weight: float = Field(ge=0.0, le=1.0)


class Question(_Strict):
    prompt: str
    labels: list[Choice] = Field(min_length=2)

    @model_validator(mode="after")
    def _unique(self) -> Question:
        _check_unique([c.value for c in self.labels], "labels")
        _check_unique([c.key for c in self.labels if c.key], "label keys")
        return self


class Certainty(_Strict):
    prompt: str
    options: list[CertaintyChoice] = Field(min_length=2)
    # The option that means "I can't tell": counted for expert routing, never as a vote.
    cant_tell: str = "cant_tell"

    @model_validator(mode="after")
    def _check(self) -> Certainty:
        values = [c.value for c in self.options]
        _check_unique(values, "certainty options")
        if self.cant_tell not in values:
            raise ValueError(f"cant_tell '{self.cant_tell}' is not one of the options {values}")
        return self


class QualityFlag(_Strict):
    prompt: str
    options: list[Choice] = Field(min_length=1)


class Mark(_Strict):
    """A region drawn on an instruction example, in relative units (0..1 of width/height)."""

    shape: Literal["ellipse", "box", "arrow"]
    # ellipse/box: [x0, y0, x1, y1]; arrow: [x_tail, y_tail, x_head, y_head].
    at: list[float] = Field(min_length=4, max_length=4)
    label: str = ""

    @model_validator(mode="after")
    def _relative(self) -> Mark:
        if not all(0.0 <= v <= 1.0 for v in self.at):
            raise ValueError(f"mark coordinates must be relative (0..1), got {self.at}")
        return self


class Example(_Strict):
    image: str  # path relative to the job file, or a gold image reference
    caption: str
    answer: str | None = None
    marks: list[Mark] = []  # where to look, drawn on a copy of the image


class Instructions(_Strict):
    markdown: str | None = None
    file: str | None = None  # Markdown file relative to the job file
    examples: list[Example] = []

    @model_validator(mode="after")
    def _one_source(self) -> Instructions:
        if not (self.markdown or self.file):
            raise ValueError("give either 'markdown' or 'file'")
        return self


class Judgments(_Strict):
    min: int = Field(default=3, ge=1, le=50)
    max: int = Field(default=5, ge=1, le=100)
    confidence_target: float = Field(default=0.8, gt=0.5, le=1.0)
    max_per_annotator: int = Field(default=1000, ge=1)
    # Model-assisted labeling (needs ``cxrlabel score``): an image may be finalised with
    # this many trusted judgments (0 = off) when the crowd reaches the confidence target and
    # the model's p(PNEUMONIA) agrees with at least ``model_confidence`` (see docs/quality.md).
    min_if_model_agrees: int = Field(default=0, ge=0, le=50)
    model_confidence: float = Field(default=0.9, gt=0.5, le=1.0)
    # With the online posterior: send an image to review as soon as the judgments left before
    # ``max`` could not reach ``confidence_target`` even if they all agreed with the leading
    # label (each at ``quality.peer_accuracy``), instead of paying for them first.
    review_when_hopeless: bool = False

    @model_validator(mode="after")
    def _order(self) -> Judgments:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if self.min_if_model_agrees > self.min:
            raise ValueError(
                f"min_if_model_agrees ({self.min_if_model_agrees}) must be <= min ({self.min})"
            )
        return self


class Gold(_Strict):
    quiz_length: int = Field(default=8, ge=0, le=100)
    min_accuracy: float = Field(default=0.75, gt=0.0, le=1.0)
    per_page: int = Field(default=1, ge=0)
    # No removal rule looks at gold before this many gold answers (quiz included).
    min_gold_before_removal: int = Field(default=5, ge=1)
    # The strict rule of old: remove every annotator whose trust falls below min_accuracy.
    # Off by default: weak-but-honest annotators are down-weighted, not removed; removal is
    # for harm (quality.harm_accuracy, peer disagreement, speed, one button; docs/quality.md).
    remove_below_min_accuracy: bool = False
    # Beta prior on accuracy: trust = (correct + a) / (seen + a + b).
    prior_correct: float = Field(default=2.0, ge=0.0)
    prior_missed: float = Field(default=1.0, ge=0.0)
    # Quiz retakes after a failed attempt (on other test questions, after re-reading the
    # instructions); the failure after the last retake is final.
    quiz_retakes: int = Field(default=1, ge=0, le=5)
    # Retire a test question once its answer has been shown (missed-gold feedback) to this
    # many distinct annotators: a widely known answer no longer tests anyone (0: never).
    retire_after_reveals: int = Field(default=3, ge=0, le=100000)


class Training(_Strict):
    """Practice before the quiz (issue 17): clear cases from the training pool (never gold),
    each page followed by the right answers and the expert's reasons; counted for nothing."""

    enabled: bool = False
    items: int = Field(default=6, ge=1, le=100)  # training cases each newcomer answers
    per_page: int = Field(default=3, ge=1, le=20)  # feedback after every page of this many


class Pages(_Strict):
    items_per_page: int = Field(default=10, ge=1, le=100)
    min_seconds_per_page: float = Field(default=20.0, ge=0.0)
    reservation_minutes: float = Field(default=30.0, gt=0.0)


class Quality(_Strict):
    speed_trap_limit: int = Field(default=3, ge=1)
    distribution_min_answers: int = Field(default=30, ge=5)
    distribution_min_entropy_bits: float = Field(default=0.2, ge=0.0)
    distribution_max_prevalence_gap: float = Field(default=0.45, gt=0.0, le=1.0)
    distribution_remove: bool = False
    expected_prevalence: dict[str, float] = {}
    # Removal for harm (quality/skill.py): the crowd's typical accuracy on work images (turns
    # agreement with peers into accuracy), the accuracy credibly below which an annotator's
    # answers make labels worse, and the peer pairs needed before peers may remove anyone.
    peer_accuracy: float = Field(default=0.75, gt=0.5, le=1.0)
    harm_accuracy: float = Field(default=0.6, ge=0.0, le=1.0)
    min_peer_pairs: int = Field(default=30, ge=1)
    # Collusion (0 = off): a peer with whom an annotator has at least this many pairs and
    # agrees on COLLUSION_AGREEMENT of them is a partner, not a referee; those pairs leave
    # both annotators' peer evidence (docs/quality.md, "Removal for harm").
    collusion_min_pairs: int = Field(default=0, ge=0)


class Review(_Strict):
    cant_tell_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    quality_flag_votes: int = Field(default=2, ge=1)
    # Model-assisted review (needs ``cxrlabel score``): a crowd label that would be
    # finalised goes to an expert instead when the model's p(PNEUMONIA) is >= this threshold
    # and the crowd says otherwise, or <= 1 - threshold and the crowd says PNEUMONIA.
    model_disagreement: float | str = "off"

    @field_validator("model_disagreement", mode="before")
    @classmethod
    def _threshold_or_off(cls, value: object) -> float | str:
        if value == "off":
            return "off"
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not (0.5 < value <= 1.0)
        ):
            raise ValueError(f'must be "off" or a number in (0.5, 1.0], got {value!r}')
        return float(value)

    @property
    def model_disagreement_threshold(self) -> float | None:
        return None if self.model_disagreement == "off" else float(self.model_disagreement)


class Assignment(_Strict):
    # "default": open images closest to being finalised first, then the oldest.
    # "model_uncertainty": the same, but among equally complete images the ones the model is
    # least sure about (|model_score - 0.5| smallest) first; images without a score last.
    order: Literal["default", "model_uncertainty"] = "default"


class Aggregation(_Strict):
    method: Literal["trust", "mv", "ds", "glad", "certainty"] = "trust"
    # The online decision (dynamic judgments, review routing): "auto" = ``method`` when it is
    # defined for one image, else "trust"; "posterior" = the one-coin Bayesian posterior with
    # each annotator's trust as accuracy, scaled by the certainty weight, and
    # quality.expected_prevalence as prior (docs/quality.md): confident answers from trusted
    # annotators settle an image sooner, weak or unsure ones ask for more.
    online: Literal["auto", "posterior"] = "auto"


class Pay(_Strict):
    per_page: float = Field(default=0.10, ge=0.0)
    currency: str = "USD"
    pages_per_hour: float = Field(default=40.0, gt=0.0)
    # Training pages are practice with feedback, counted for nothing (as Toloka's training
    # pools); a job may choose to pay them.
    training_paid: bool = False


class Ingest(_Strict):
    # Regex with a named group starting with 'pid' that extracts the patient id from a file stem.
    patient_id_pattern: str = KERMANY_PATIENT_PATTERN

    @model_validator(mode="after")
    def _compiles(self) -> Ingest:
        try:
            compiled = re.compile(self.patient_id_pattern)
        except re.error as exc:
            raise ValueError(f"patient_id_pattern is not a valid regex: {exc}") from None
        if not any(g.startswith("pid") for g in compiled.groupindex):
            raise ValueError("patient_id_pattern needs a named group such as (?P<pid>...)")
        return self


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9\-_]*$", max_length=120)
    title: str
    description: str = ""
    question: Question
    certainty: Certainty
    quality_flag: QualityFlag
    instructions: Instructions
    judgments: Judgments = Judgments()
    gold: Gold = Gold()
    training: Training = Training()
    pages: Pages = Pages()
    quality: Quality = Quality()
    review: Review = Review()
    assignment: Assignment = Assignment()
    aggregation: Aggregation = Aggregation()
    pay: Pay = Pay()
    ingest: Ingest = Ingest()

    # Where the file was loaded from (for resolving instruction files and example images).
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        if self.gold.per_page >= self.pages.items_per_page:
            raise ValueError(
                f"gold.per_page ({self.gold.per_page}) must be smaller than "
                f"pages.items_per_page ({self.pages.items_per_page})"
            )
        labels = set(self.label_values)
        model_rules = (
            self.review.model_disagreement != "off" or self.judgments.min_if_model_agrees > 0
        )
        if model_rules and (len(labels) != 2 or PNEUMONIA not in labels):
            raise ValueError(
                "review.model_disagreement and judgments.min_if_model_agrees need a two-label "
                "question with a 'PNEUMONIA' label "
                "(the model score is p(PNEUMONIA))"
            )
        for key in self.quality.expected_prevalence:
            if key not in labels:
                raise ValueError(f"quality.expected_prevalence has unknown label '{key}'")
        return self

    @property
    def label_values(self) -> list[str]:
        return [c.value for c in self.question.labels]

    @property
    def certainty_values(self) -> list[str]:
        return [c.value for c in self.certainty.options]

    @property
    def certainty_weights(self) -> dict[str, float]:
        return {c.value: c.weight for c in self.certainty.options}

    @property
    def quality_flag_values(self) -> list[str]:
        return [c.value for c in self.quality_flag.options]

    def instructions_markdown(self) -> str:
        if self.instructions.markdown:
            return self.instructions.markdown
        return (Path(self.base_dir) / str(self.instructions.file)).read_text(encoding="utf-8")


def _check_unique(values: list[str], what: str) -> None:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(duplicates)}")


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number of a field: the last key of its location in the TOML text."""
    keys = [k for k in loc if isinstance(k, str)]
    if not keys:
        return None
    pattern = re.compile(rf"^\s*{re.escape(keys[-1])}\s*=", re.MULTILINE)
    if len(keys) > 1:  # start the search after the table header if there is one
        header = re.search(rf"^\s*\[+{re.escape(keys[0])}[\].]", text, re.MULTILINE)
        start = header.start() if header else 0
    else:
        start = 0
    match = pattern.search(text, start) or re.search(
        rf"^\s*\[+{re.escape(keys[-1])}\]+", text, re.MULTILINE
    )
    return text.count("\n", 0, match.start()) + 1 if match else None


def _format_error(source: str, text: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] == "extra_forbidden":
        message = "unknown field (check the spelling)"
    line = _line_of(text, loc)
    where = f"{source}:{line}" if line else source
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{where}: field '{field}': {message}{more}"


def parse_job(text: str, source: str = "<job>", base_dir: str | Path = ".") -> JobSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobSpecError(f"{source}: not valid TOML: {exc}") from None
    data["base_dir"] = str(base_dir)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobSpecError(_format_error(source, text, exc)) from None


def load_job(path: str | Path) -> JobSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobSpecError(f"{path}: job file not found") from None
    except UnicodeDecodeError:
        raise JobSpecError(f"{path}: job file is not UTF-8 text") from None
    except OSError as exc:
        raise JobSpecError(f"{path}: cannot read job file: {exc.strerror}") from None
    return parse_job(text, str(path), path.parent)


def resolve_job_path(name_or_path: str | Path | None) -> Path:
    """A job given by path, or by name among the bundled jobs (``pneumonia-pediatric``)."""
    from cxrlabel.config import DEFAULT_JOB

    candidate = Path(name_or_path or DEFAULT_JOB)
    if candidate.suffix == ".toml" or candidate.exists():
        return candidate
    bundled = bundled_jobs_dir() / f"{candidate.name}.toml"
    if bundled.exists():
        return bundled
    raise JobSpecError(f"{name_or_path}: no such job file or bundled job")

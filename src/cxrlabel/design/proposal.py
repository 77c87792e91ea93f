"""The job design Proposal: a document generated from the job file and the live numbers.

One Markdown template (``templates/proposal.md.j2``) is the single source; it is rendered to
HTML (table of contents, inline SVG plots, no external resources), to Markdown (plots as PNG
files next to it) or to PDF (the HTML printed by headless Chromium).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.design.estimate import (
    DEFAULT_ANNOTATORS,
    Estimate,
    EstimateInputs,
    estimate,
    inputs_from_spec,
)
from cxrlabel.design.goldcheck import GoldReport, GoldWarning, check_gold
from cxrlabel.design.instructions import IllustratedExample, illustrated_examples
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AnnotatorState,
    Contest,
    ExpertReview,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    utcnow,
)
from cxrlabel.templating import document_env, markdown_env, markdown_html

# Used for the estimate when no image is ingested yet; the proposal says it is an assumption.
ASSUMED_IMAGES = 1000
FIGURE_LINE = re.compile(r"^\[\[figure:(?P<name>[a-z_]+)\]\]$", re.MULTILINE)

SIMULATION_KEYS: list[tuple[str, str]] = [
    ("label_accuracy", "label accuracy (vs reference)"),
    ("judgments_per_image", "judgments per image"),
    ("expert_review_fraction", "share of images sent to an expert"),
    ("annotators_removed", "annotators removed"),
    ("bad_annotators_removed", "bad annotators removed"),
    ("cost", "crowd cost"),
    ("hours", "annotator-hours"),
]

AGGREGATION_TEXT = {
    "trust": "each vote counts with the annotator's trust (their smoothed accuracy on test "
    "questions), as in Figure Eight/Appen; the confidence is the trust share of the winning "
    "answer. Simple, explainable to annotators and admins, and robust with 3–5 votes per image.",
    "mv": "plain majority vote: every trusted annotator counts the same. Transparent, but a "
    "careless annotator who passed the quiz weighs as much as a careful one.",
    "ds": "Dawid–Skene: a confusion matrix per annotator is learned from all their answers "
    "(EM), so systematic biases (e.g. always answering PNEUMONIA) are corrected.",
    "glad": "GLAD: learns each annotator's skill and each image's difficulty jointly, so hard "
    "images do not count against good annotators.",
    "certainty": "certainty-aware Dawid–Skene: like Dawid–Skene, with each vote weighted by the "
    "annotator's stated certainty, so honest doubt counts less than a confident answer.",
}


class ProposalError(ValueError):
    """A proposal input problem (bad simulation file, no Chromium for PDF), as one line."""


FORMAT_OF_SUFFIX = {".md": "md", ".markdown": "md", ".pdf": "pdf", ".html": "html", ".htm": "html"}


def output_format(output: Path, fmt: str | None) -> str:
    """``fmt`` (``--format``), else what the output's suffix says (a proposal.pdf that held HTML
    would not open in a PDF reader); ``ProposalError`` for an unknown format or one that
    contradicts the suffix."""
    if fmt is not None and fmt not in ("html", "md", "pdf"):
        raise ProposalError(f"--format must be html, md or pdf, not {fmt!r}")
    implied = FORMAT_OF_SUFFIX.get(output.suffix.lower())
    if fmt is not None and implied is not None and fmt != implied:
        raise ProposalError(
            f"{output.name} names a {implied} file but --format is {fmt}; make them agree"
        )
    return fmt or implied or "html"


# --- live numbers ---------------------------------------------------------------------------


@dataclass
class LiveNumbers:
    images_total: int = 0
    work_images: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_reference: dict[str, int] = field(default_factory=dict)
    annotators: dict[str, int] = field(default_factory=dict)
    judgments: int = 0
    gold_by_source: dict[str, int] = field(default_factory=dict)
    contests: dict[str, int] = field(default_factory=dict)
    forgiven: int = 0
    expert_reviews: int = 0

    @property
    def status_text(self) -> str:
        return ", ".join(f"{n:,} {s.replace('_', ' ')}" for s, n in sorted(self.by_status.items()))

    @property
    def reference_text(self) -> str:
        total = sum(self.by_reference.values())
        return ", ".join(
            f"{label} {n:,} ({n / total:.0%})" for label, n in sorted(self.by_reference.items())
        )

    @property
    def annotators_text(self) -> str:
        if not self.annotators:
            return "no annotator has joined yet"
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.annotators.items()))
        return (
            f"{sum(self.annotators.values())} annotator(s) joined ({parts}), "
            f"{self.judgments:,} judgments"
        )

    contests_total = property(lambda self: sum(self.contests.values()))
    contests_open = property(lambda self: self.contests.get("open", 0))
    contests_upheld = property(lambda self: self.contests.get("upheld", 0))
    contests_changed = property(lambda self: self.contests.get("changed", 0))
    needs_review = property(lambda self: self.by_status.get(ImageStatus.NEEDS_REVIEW, 0))


def live_numbers(session: Session | None, job: Job | None) -> LiveNumbers:
    if session is None or job is None:
        return LiveNumbers()

    def grouped(column, *where) -> dict:
        rows = session.execute(select(column, func.count()).where(*where).group_by(column))
        return {k: n for k, n in rows.all() if k is not None}

    by_status = grouped(Image.status, Image.job_id == job.id)
    gold_ids = select(GoldItem.id).where(GoldItem.job_id == job.id)
    return LiveNumbers(
        images_total=sum(by_status.values()),
        work_images=sum(n for s, n in by_status.items() if s not in ImageStatus.NOT_WORK),
        by_status=by_status,
        by_reference=grouped(
            Image.reference_label, Image.job_id == job.id, Image.status.not_in(ImageStatus.NOT_WORK)
        ),
        annotators=grouped(AnnotatorState.status, AnnotatorState.job_id == job.id),
        judgments=session.scalar(
            select(func.count()).select_from(Judgment).where(Judgment.job_id == job.id)
        )
        or 0,
        gold_by_source=grouped(GoldItem.source, GoldItem.job_id == job.id),
        contests=grouped(Contest.status, Contest.gold_id.in_(gold_ids)),
        forgiven=session.scalar(
            select(func.coalesce(func.sum(AnnotatorState.gold_forgiven), 0)).where(
                AnnotatorState.job_id == job.id
            )
        )
        or 0,
        expert_reviews=session.scalar(
            select(func.count())
            .select_from(ExpertReview)
            .join(Image, Image.id == ExpertReview.image_id)
            .where(Image.job_id == job.id)
        )
        or 0,
    )


# --- simulation -----------------------------------------------------------------------------


def default_simulation_path(data_dir: Path, job_name: str) -> Path:
    return data_dir / "simulation" / f"{job_name}.json"


def load_simulation(path: Path) -> dict[str, float]:
    """The simulator's result figures; unknown keys are kept, known ones must be numbers."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProposalError(f"{path}: simulation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProposalError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProposalError(f"{path}: expected a JSON object with the simulation figures")
    for key, _ in SIMULATION_KEYS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ProposalError(f"{path}: '{key}' must be a number, got {value!r}")
    return data


def _format_simulation(sim: dict, currency: str) -> Callable[[str], str]:
    def fmt(key: str) -> str:
        value = sim.get(key)
        if value is None:
            return "not in the simulation file"
        if key in ("label_accuracy", "expert_review_fraction"):
            return f"{value:.1%}"
        if key == "cost":
            return f"{value:,.2f} {currency}"
        if key in ("annotators_removed", "bad_annotators_removed"):
            return f"{value:,.0f}"
        return f"{value:,.2f}"

    return fmt


# --- figures --------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def figure_cost_vs_judgments(spec: JobSpec, inputs: EstimateInputs):
    lo, hi = spec.judgments.min, spec.judgments.max
    xs = [lo + (hi - lo) * k / 40 for k in range(41)] if hi > lo else [lo]
    costs = [estimate(_replace(inputs, judgments_per_image=x)).cost for x in xs]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(xs, costs, color="#0969da", lw=2)
    point = estimate(inputs)
    ax.scatter(
        [inputs.judgments_per_image],
        [point.cost],
        color="#cf222e",
        zorder=3,
        label=f"estimate: {point.cost:,.2f} {inputs.currency}",
    )
    ax.set_xlabel("trusted judgments per image (dynamic: min to max)")
    ax.set_ylabel(f"crowd cost ({inputs.currency})")
    ax.set_title(f"Cost vs judgments per image ({inputs.images:,} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def figure_days_vs_pool(inputs: EstimateInputs):
    pools = sorted({5, 10, 20, 40, 80, 160, inputs.annotators})
    days = [estimate(_replace(inputs, annotators=n)).calendar_days for n in pools]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(pools, days, marker="o", color="#1a7f37")
    ax.set_xscale("log")
    ax.set_xticks(pools, [str(p) for p in pools])
    ax.set_xlabel("annotators in the pool")
    ax.set_ylabel("calendar days")
    ax.set_title(f"Calendar time vs pool size ({inputs.hours_per_annotator_per_day:g} h/day each)")
    ax.grid(alpha=0.3)
    return fig


def figure_gold_balance(report: GoldReport, spec: JobSpec):
    labels = [*spec.label_values] + (["any"] if "any" in report.by_label else [])
    gold_share = [report.by_label.get(k, 0) / max(report.n_gold, 1) for k in labels]
    expected = [spec.quality.expected_prevalence.get(k, math.nan) for k in labels]
    fig = _figure(5.2, 3.0)
    ax = fig.add_subplot()
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], gold_share, width=0.4, label="test questions", color="#8250df")
    ax.bar([x + 0.2 for x in xs], expected, width=0.4, label="expected in work", color="#afb8c1")
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.set_title(f"Gold bank class balance ({report.n_gold} items)")
    ax.legend()
    return fig


def _replace(inputs: EstimateInputs, **changes) -> EstimateInputs:
    from dataclasses import replace

    return replace(inputs, **changes)


def figure_svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE (which names a URL)


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


# --- the document ---------------------------------------------------------------------------


@dataclass
class Proposal:
    markdown: str  # with [[figure:NAME]] lines
    figures: dict[str, tuple[str, object]]  # name -> (caption, matplotlib figure)
    title: str

    def sections(self) -> list[tuple[str, str]]:
        """(title, Markdown body) for every '## ' section, in order."""
        parts = re.split(r"^## (.+)$", self.markdown, flags=re.MULTILINE)
        return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts), 2)]

    def preamble(self) -> str:
        return re.split(r"^## ", self.markdown, maxsplit=1, flags=re.MULTILINE)[0]


def _instructions_outline(spec: JobSpec) -> tuple[list[str], int]:
    text = spec.instructions_markdown()
    headings = [h.strip() for h in re.findall(r"^##\s+(.+)$", text, re.MULTILINE)]
    return headings, len(re.findall(r"\w+", text))


def _quiz_pass_text(spec: JobSpec) -> str:
    g = spec.gold
    n = g.quiz_length
    for correct in range(n + 1):
        if (correct + g.prior_correct) / (n + g.prior_correct + g.prior_missed) >= (
            g.min_accuracy - 1e-12
        ):
            return f"with these settings a new annotator needs {correct} of {n} right to pass"
    return f"with these settings nobody can pass a quiz of {n} (check gold.min_accuracy)"


def build_proposal(
    spec: JobSpec,
    session: Session | None = None,
    job: Job | None = None,
    data_dir: Path | None = None,
    simulation: dict | None = None,
    simulation_source: str = "",
    images: int | None = None,
    annotators: int = DEFAULT_ANNOTATORS,
    examples: list[IllustratedExample] | None = None,
) -> Proposal:
    live = live_numbers(session, job)
    if session is not None and job is not None:
        gold = check_gold(session, job, spec, annotators=annotators, data_dir=data_dir)
    else:
        gold = GoldReport(
            0,
            {},
            {},
            0,
            0.0,
            0.0,
            [
                GoldWarning(
                    "empty", "no job database was given, so the gold bank could not be checked"
                )
            ],
        )
    n_images = images or live.work_images or ASSUMED_IMAGES
    sim_jpi = (simulation or {}).get("judgments_per_image")
    inputs = inputs_from_spec(
        spec,
        n_images,
        judgments_per_image=sim_jpi,
        annotators=annotators,
        expert_review_fraction=float((simulation or {}).get("expert_review_fraction") or 0.0),
    )
    point: Estimate = estimate(inputs)
    low = estimate(_replace(inputs, judgments_per_image=float(spec.judgments.min)))
    high = estimate(_replace(inputs, judgments_per_image=float(spec.judgments.max)))
    if examples is None:
        examples = illustrated_examples(spec, session, job, data_dir)
    headings, words = _instructions_outline(spec)
    spec_text = job.spec_toml if job is not None else spec.model_dump_json()
    markdown = markdown_env.get_template("design:proposal.md.j2").render(
        spec=spec,
        live=live,
        gold=gold,
        estimate=point,
        low=low,
        high=high,
        images_assumed=not images and not live.work_images,
        jpi_source="from the simulation"
        if sim_jpi
        else "the dynamic-judgment minimum; no simulation yet, so this is the cheapest case",
        pages_bound_text="unlimited"
        if math.isinf(gold.pages_bound)
        else f"{gold.pages_bound:,.0f}",
        simulation=simulation,
        simulation_source=simulation_source,
        sim_keys=SIMULATION_KEYS,
        sim_fmt=_format_simulation(simulation or {}, spec.pay.currency),
        examples=examples,
        instr_headings=headings,
        instr_words=words,
        cant_tell_text=next(
            c.text for c in spec.certainty.options if c.value == spec.certainty.cant_tell
        ),
        aggregation_text=AGGREGATION_TEXT[spec.aggregation.method],
        quiz_pass_text=_quiz_pass_text(spec),
        generated_at=utcnow().strftime("%Y-%m-%d %H:%M UTC"),
        spec_sha=hashlib.sha256(spec_text.encode()).hexdigest(),
    )
    markdown = re.sub(r"\n{3,}", "\n\n", markdown)
    figures: dict[str, tuple[str, object]] = {
        "cost_vs_judgments": (
            "Crowd cost as a function of judgments per image.",
            figure_cost_vs_judgments(spec, inputs),
        ),
        "days_vs_pool": (
            "Calendar time as a function of the annotator pool.",
            figure_days_vs_pool(inputs),
        ),
    }
    if gold.n_gold:
        figures["gold_balance"] = (
            "Class balance of the test questions vs the expected prevalence in the work.",
            figure_gold_balance(gold, spec),
        )
    return Proposal(markdown=markdown, figures=figures, title=f"Job design proposal: {spec.title}")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def render_html(proposal: Proposal) -> str:
    def with_figures(html: str) -> str:
        def figure(match: re.Match) -> str:
            name = match.group("name")
            if name not in proposal.figures:
                return ""
            caption, fig = proposal.figures[name]
            return (
                f'<figure class="plot" id="figure-{name}">{figure_svg(fig)}'
                f"<figcaption>{caption}</figcaption></figure>"
            )

        return re.sub(r"<p>\[\[figure:(?P<name>[a-z_]+)\]\]</p>", figure, html)

    sections = [
        {"id": _slug(title), "title": title, "html": Markup(with_figures(str(markdown_html(body))))}
        for title, body in proposal.sections()
    ]
    return document_env.get_template("design:proposal.html.j2").render(
        title=proposal.title,
        preamble=Markup(markdown_html(proposal.preamble().split("\n", 1)[1])),
        sections=sections,
    )


def render_markdown(proposal: Proposal, out: Path) -> str:
    """Markdown with a table of contents; plots are written as PNGs in ``<stem>-figures/``."""
    folder = out.parent / f"{out.stem}-figures"

    def figure(match: re.Match) -> str:
        name = match.group("name")
        if name not in proposal.figures:
            return ""
        caption, fig = proposal.figures[name]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.png").write_bytes(figure_png(fig))
        return f"![{caption}]({folder.name}/{name}.png)"

    toc = "\n".join(
        f"{n}. [{title}](#{_slug(title)})" for n, (title, _) in enumerate(proposal.sections(), 1)
    )
    preamble = proposal.preamble().rstrip()
    body = proposal.markdown[len(proposal.preamble()) :]
    return f"{preamble}\n\n## Contents\n\n{toc}\n\n{FIGURE_LINE.sub(figure, body)}"


def chromium_executable() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render_pdf(html: str, out: Path, timeout: float = 120.0) -> None:
    """Print the HTML to PDF with headless Chromium (no network: the HTML is self-contained)."""
    exe = chromium_executable()
    if exe is None:
        raise ProposalError("PDF needs Chromium (apt-get install chromium); use --format html")
    with tempfile.TemporaryDirectory(prefix="cxrlabel-proposal-") as tmp:
        page = Path(tmp) / "proposal.html"
        page.write_text(html, encoding="utf-8")
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--user-data-dir={tmp}/profile",
            f"--print-to-pdf={out.resolve()}",
            page.as_uri(),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ProposalError(f"Chromium did not print within {timeout:.0f} s") from None
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ProposalError(f"Chromium could not print the PDF: {tail[0]}")


def section_titles(markdown: str) -> list[str]:
    return [t for t, _ in Proposal(markdown, {}, "").sections()]

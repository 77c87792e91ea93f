"""Simulated annotator personas: how a kind of person answers, how sure they say they are, how
fast they go. Pure NumPy; no database.

Answer model (one per persona, item-response-theory style):

    logit P(correct | image) = alpha - slope * z(difficulty)

``difficulty`` is the image's difficulty percentile in [0, 1] (see ``difficulty.py``) and
``z`` its standard-normal quantile, so ``z`` is N(0, 1) over a collection. ``alpha`` is solved
so that the *mean* accuracy over the collection equals the persona's ``accuracy``: a preset
says "this kind of annotator is right 76 % of the time" and the slope says how much of that
is lost on hard images. With a positive slope the hardest images are answered wrongly by
most novices (systematic, correlated errors) - this is what makes real crowds plateau and
why majority vote alone cannot reach expert agreement.

Strategies: ``skilled`` (the model above, optionally biased toward one label), ``random``
(spammer: uniform answers), ``constant`` (spammer: always one label), ``adversarial``
(answers honestly in the quiz and its first pages to get in, then gives the opposite of what
it believes most of the time), ``harvester`` (issue 18's gold harvester or colluding account:
knows the gold bank, so answers every test question right, and gives the opposite of what it
believes on work images with ``flip_rate``), ``colluder`` (a colluding ring: accounts that
share the gold answers they collect, so every test question right, and give the ring's shared,
unread answer on work images - the same for every account of the ring on the same image, so
they agree with each other and, on two labels, with everyone else only by chance).

Learning: with ``start_accuracy`` set, the persona starts at that accuracy and reaches
``accuracy`` linearly after ``learn_pages`` pages with feedback (training pages show every
case's answer and reason; quiz and work pages the missed test questions with the expert's
reason) - the honest slow learner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import norm

from cxrlabel.vocab import NORMAL, PNEUMONIA

Strategy = Literal["skilled", "random", "constant", "adversarial", "harvester", "colluder"]
CertaintyStyle = Literal["calibrated", "overconfident", "always_definitely", "random"]

STRATEGIES: tuple[str, ...] = (
    "skilled",
    "random",
    "constant",
    "adversarial",
    "harvester",
    "colluder",
)
CERTAINTY_STYLES: tuple[str, ...] = ("calibrated", "overconfident", "always_definitely", "random")

# The bundled job's certainty values; a job with other values maps them by position
# (most certain first, "can't tell" last), see ``Persona.certainty_for``.
DEFINITELY, PROBABLY, CANT_TELL = "definitely", "probably", "cant_tell"

# Quadrature grid over z ~ N(0, 1) used to calibrate alpha (mid-point quantiles).
_Z_GRID = norm.ppf((np.arange(2000) + 0.5) / 2000)
_STANDARD_NORMAL = NormalDist()


@lru_cache(maxsize=256)
def solve_alpha(accuracy: float, slope: float) -> float:
    """The intercept alpha such that E_z[sigmoid(alpha - slope*z)] == accuracy."""
    accuracy = min(max(accuracy, 1e-4), 1 - 1e-4)

    def gap(alpha: float) -> float:
        return float(expit(alpha - slope * _Z_GRID).mean()) - accuracy

    return float(brentq(gap, -30.0, 30.0))


def difficulty_z(difficulty: np.ndarray | float) -> np.ndarray:
    """Standard-normal score of a difficulty percentile (clipped away from 0 and 1)."""
    return norm.ppf(np.clip(np.asarray(difficulty, dtype=float), 0.0005, 0.9995))


@dataclass(frozen=True)
class SimAnswer:
    answer: str
    certainty: str
    quality_flag: str | None
    p_correct: float  # the persona's true chance of being right on this image (for tests)
    correct: bool


@dataclass(frozen=True)
class Persona:
    """One kind of annotator. ``accuracy`` is the mean chance of a correct answer when the
    persona answers on its own judgement (not following its bias, not lying)."""

    name: str
    accuracy: float = 0.75
    slope: float = 1.2  # how much harder images hurt (0 = difficulty does not matter)
    strategy: Strategy = "skilled"
    bias_label: str | None = None  # label answered without looking, with probability ``bias``
    bias: float = 0.0
    constant_label: str | None = None  # for strategy "constant" (default: the first label)
    flip_rate: float = 0.85  # adversarial: chance of answering against its belief
    honest_pages: int = 2  # adversarial: honest work pages after the quiz, to look good
    certainty_style: CertaintyStyle = "calibrated"
    overconfidence: float = 0.2  # added to the felt chance of being right ("overconfident")
    definitely_above: float = 0.82  # felt chance of being right above which: "definitely"
    cant_tell_below: float = 0.55  # ... below which: "can't tell"
    seconds_per_item: float = 5.0  # median
    seconds_sigma: float = 0.35  # log-normal spread of page times
    flag_rate: float = 0.01  # chance of ticking an image-quality flag
    pages_per_session: float = 15.0  # median pages before leaving a session
    sessions: float = 1.5  # mean number of working sessions (returns after a break)
    bad: bool | None = None  # None: decided from the expected accuracy (see ``is_bad``)
    start_accuracy: float | None = None  # learner: accuracy before any feedback
    learn_pages: float = 10.0  # learner: pages with feedback to reach ``accuracy``
    ring: int = 1  # colluder: accounts with the same ring number share one answer key

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"persona {self.name}: strategy must be one of {STRATEGIES}")
        if self.certainty_style not in CERTAINTY_STYLES:
            raise ValueError(
                f"persona {self.name}: certainty_style must be one of {CERTAINTY_STYLES}"
            )
        if self.start_accuracy is not None and not 0.0 <= self.start_accuracy <= 1.0:
            raise ValueError(f"persona {self.name}: start_accuracy must be in [0, 1]")
        if self.learn_pages <= 0:
            raise ValueError(f"persona {self.name}: learn_pages must be positive")
        for name in ("accuracy", "bias", "flip_rate", "flag_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"persona {self.name}: {name} must be in [0, 1], got {value}")
        if self.seconds_per_item <= 0 or self.pages_per_session <= 0 or self.sessions <= 0:
            raise ValueError(
                f"persona {self.name}: seconds_per_item, pages_per_session and sessions "
                "must be positive"
            )

    # -- answering ----------------------------------------------------------------------------

    def p_correct(self, difficulty: np.ndarray | float) -> np.ndarray:
        """Chance of a correct answer on its own judgement, per image difficulty."""
        alpha = solve_alpha(self.accuracy, self.slope)
        return expit(alpha - self.slope * difficulty_z(difficulty))

    def p_correct_one(self, difficulty: float, feedback_pages: int = 0) -> float:
        """``p_correct`` for one image, without NumPy overhead (the simulator's hot path)."""
        z = _STANDARD_NORMAL.inv_cdf(min(max(float(difficulty), 0.0005), 0.9995))
        accuracy = round(self.accuracy_after(feedback_pages), 3)  # cached alphas stay few
        return 1.0 / (1.0 + math.exp(-(solve_alpha(accuracy, self.slope) - self.slope * z)))

    def accuracy_after(self, feedback_pages: int) -> float:
        """Mean accuracy after this many pages with feedback (learners improve linearly)."""
        if self.start_accuracy is None:
            return self.accuracy
        progress = min(1.0, max(0, feedback_pages) / self.learn_pages)
        return self.start_accuracy + (self.accuracy - self.start_accuracy) * progress

    def answer(
        self,
        rng: np.random.Generator,
        truth: str,
        difficulty: float,
        labels: list[str],
        certainties: list[str],
        flags: list[str],
        *,
        pages_done: int = 0,
        is_quiz: bool = False,
        is_gold: bool = False,
        feedback_pages: int = 0,
        image_key: int | None = None,
    ) -> SimAnswer:
        """One answer for one image; ``pages_done`` counts this annotator's work pages so far,
        ``feedback_pages`` every page submitted (training and quiz included: each gave
        feedback); ``image_key`` identifies the image (the colluding ring's shared key)."""
        p = self.p_correct_one(difficulty, feedback_pages)
        believed = truth if rng.random() < p else _other(rng, truth, labels)
        answer, felt = believed, p
        if self.strategy == "random":
            answer, felt = labels[int(rng.integers(len(labels)))], 0.5
        elif self.strategy == "constant":
            answer, felt = self.constant_label or labels[0], 1.0
        elif self.strategy == "adversarial":
            honest = is_quiz or pages_done < self.honest_pages
            if not honest and rng.random() < self.flip_rate:
                answer, felt = _other(rng, believed, labels), 1.0
        elif self.strategy == "harvester":
            if is_gold or is_quiz:  # it knows the gold bank
                answer, felt = truth, 1.0
            elif rng.random() < self.flip_rate:
                answer, felt = _other(rng, believed, labels), 1.0
        elif self.strategy == "colluder":
            if is_gold or is_quiz:  # the ring pools the test questions' answers
                answer, felt = truth, 1.0
            else:
                answer, felt = _ring_answer(rng, self.ring, image_key, labels), 1.0
        elif self.bias_label is not None and rng.random() < self.bias:
            answer = self.bias_label
        certainty = self.certainty_for(rng, felt, certainties)
        flag = (
            flags[int(rng.integers(len(flags)))]
            if flags and rng.random() < self.flag_rate
            else None
        )
        return SimAnswer(answer, certainty, flag, p, answer == truth)

    def certainty_for(self, rng: np.random.Generator, felt: float, certainties: list[str]) -> str:
        """Stated certainty from the felt chance of being right, per the persona's style.

        ``certainties`` is the job's list, most certain first and "can't tell" last."""
        top, middle, bottom = certainties[0], certainties[len(certainties) // 2], certainties[-1]
        if self.certainty_style == "always_definitely":
            return top
        if self.certainty_style == "random":
            return certainties[int(rng.integers(len(certainties) - 1))]  # never "can't tell"
        felt = felt + rng.normal(0.0, 0.04)  # people do not know their own accuracy exactly
        if self.certainty_style == "overconfident":
            felt += self.overconfidence
        if felt >= self.definitely_above:
            return top
        return middle if felt >= self.cant_tell_below else bottom

    def page_seconds(self, rng: np.random.Generator, n_items: int) -> float:
        """Time spent on a page of ``n_items`` images (log-normal around the median)."""
        return float(self.seconds_per_item * n_items * rng.lognormal(0.0, self.seconds_sigma))

    # -- who counts as a bad annotator ---------------------------------------------------------

    def expected_accuracy(self, prevalence: dict[str, float], labels: list[str]) -> float:
        """Mean accuracy on a collection with this label prevalence, all strategies included."""
        skill = self.accuracy
        if self.strategy in ("random", "colluder"):
            return 1.0 / len(labels)
        if self.strategy == "constant":
            return prevalence.get(self.constant_label or labels[0], 1.0 / len(labels))
        if self.strategy in ("adversarial", "harvester"):
            return skill * (1 - self.flip_rate) + (1 - skill) * self.flip_rate
        if self.bias_label is None or self.bias == 0:
            return skill
        share = prevalence.get(self.bias_label, 1.0 / len(labels))
        return self.bias * share + (1 - self.bias) * skill

    def is_bad(self, prevalence: dict[str, float], labels: list[str], min_accuracy: float) -> bool:
        """A persona whose work should be removed: explicit ``bad``, a spammer or adversary,
        or one whose expected accuracy is below the job's minimum accuracy."""
        if self.bad is not None:
            return self.bad
        if self.strategy in ("random", "constant", "adversarial", "harvester", "colluder"):
            return True
        return self.expected_accuracy(prevalence, labels) < min_accuracy

    def with_overrides(self, **changes: Any) -> Persona:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"persona {self.name}: unknown setting(s) {', '.join(unknown)}")
        return replace(self, **changes)


def _ring_answer(
    rng: np.random.Generator, ring: int, image_key: int | None, labels: list[str]
) -> str:
    """The ring's shared answer for an image: a fixed coin per (ring, image), not the truth.
    Without an image key (a bare persona test) a fresh coin."""
    if image_key is None:
        return labels[int(rng.integers(len(labels)))]
    mixed = (ring * 1_000_003 + image_key) * 2_654_435_761 % 2**32  # Knuth's hash, seedless
    return labels[(mixed >> 16) % len(labels)]


def _other(rng: np.random.Generator, label: str, labels: list[str]) -> str:
    others = [value for value in labels if value != label]
    return others[int(rng.integers(len(others)))] if others else label


# The persona library. Accuracies come from published non-expert and reader studies, see
# docs/simulation.md ("The realistic crowd") for the reasoning behind each number.
PERSONAS: dict[str, Persona] = {
    persona.name: persona
    for persona in [
        Persona(
            "expert_like",
            accuracy=0.90,
            slope=1.0,
            seconds_per_item=4.0,
            pages_per_session=12,
            sessions=1.5,
            definitely_above=0.85,
        ),
        Persona(
            "careful_novice",
            accuracy=0.82,
            slope=1.2,
            seconds_per_item=7.0,
            pages_per_session=15,
            sessions=2.0,
        ),
        Persona(
            "average_novice",
            accuracy=0.76,
            slope=1.2,
            seconds_per_item=4.5,
            pages_per_session=12,
            sessions=1.5,
        ),
        Persona(
            "fast_sloppy",
            accuracy=0.64,
            slope=1.0,
            seconds_per_item=1.7,
            seconds_sigma=0.3,
            certainty_style="overconfident",
            pages_per_session=25,
            sessions=1.5,
        ),
        Persona(
            "biased_normal",
            accuracy=0.76,
            slope=1.2,
            bias_label=NORMAL,
            bias=0.45,
            seconds_per_item=4.0,
            pages_per_session=15,
        ),
        Persona(
            "biased_pneumonia",
            accuracy=0.76,
            slope=1.2,
            bias_label=PNEUMONIA,
            bias=0.45,
            seconds_per_item=4.0,
            pages_per_session=15,
        ),
        Persona(
            "spammer_random",
            accuracy=0.5,
            strategy="random",
            certainty_style="random",
            seconds_per_item=2.6,
            pages_per_session=40,
            sessions=2.0,
            flag_rate=0.0,
        ),
        Persona(
            "spammer_constant",
            accuracy=0.5,
            strategy="constant",
            constant_label=PNEUMONIA,
            certainty_style="always_definitely",
            seconds_per_item=2.4,
            pages_per_session=40,
            sessions=2.0,
            flag_rate=0.0,
        ),
        Persona(
            "adversarial",
            accuracy=0.80,
            slope=1.2,
            strategy="adversarial",
            certainty_style="always_definitely",
            seconds_per_item=4.0,
            pages_per_session=20,
            sessions=2.0,
            flag_rate=0.0,
        ),
        # Honest, starts below the quiz bar and improves with the feedback on missed test
        # questions: the annotator training and a quiz retake are for.
        Persona(
            "slow_learner",
            accuracy=0.78,
            start_accuracy=0.62,
            learn_pages=8,
            slope=1.2,
            seconds_per_item=6.0,
            pages_per_session=15,
            sessions=2.0,
        ),
        # Perfect on the gold (learned by other accounts), opposite on most work: issue 18.
        Persona(
            "gold_harvester",
            accuracy=0.80,
            slope=1.2,
            strategy="harvester",
            flip_rate=0.9,
            certainty_style="always_definitely",
            seconds_per_item=4.0,
            pages_per_session=20,
            sessions=2.0,
            flag_rate=0.0,
        ),
        # A colluding ring (issue 17): accounts that pool the gold answers they see, so they
        # pass every test question, and on work give one shared unread answer per image, so
        # they agree with each other. Not in the realistic crowd (the attack preset
        # ``collusion``); caught by peer agreement, not by gold.
        Persona(
            "colluding_pair",
            accuracy=0.80,
            strategy="colluder",
            certainty_style="always_definitely",
            seconds_per_item=4.0,  # takes its time: evades the speed trap
            pages_per_session=25,
            sessions=2.0,
            flag_rate=0.0,
        ),
    ]
}

#: The radiologist answering the review queue (see docs/simulation.md for the calibration).
EXPERT_REVIEWER = Persona("expert_reviewer", accuracy=0.95, slope=1.0, seconds_per_item=20.0)


@dataclass(frozen=True)
class PersonaShare:
    persona: Persona
    share: float

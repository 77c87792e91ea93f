"""What an expert reads about the crowd's answers on an image waiting for review (pure).

The stored confidence is computed from judgments *weighted by certainty*, so "NORMAL: 1
probably, 2 can't tell" gives confidence 1.00: the two "can't tell" answers weigh nothing.
Shown alone that number claims a certainty the crowd never had. The summary always says how
many answers the number rests on.
"""

from __future__ import annotations

from collections.abc import Mapping


def crowd_summary(
    label: str | None,
    confidence: float | None,
    answers: Mapping[str, Mapping[str, int]],
    certainty_weights: Mapping[str, float],
) -> str:
    """One honest sentence: the leaning, its confidence, and what that confidence rests on."""
    total = sum(n for per in answers.values() for n in per.values())
    if total == 0:
        return "No answers yet."
    informative = sum(
        n for per in answers.values() for c, n in per.items() if certainty_weights.get(c, 1.0) > 0
    )
    unsure = total - informative
    if label is None or confidence is None or informative == 0:
        return f"No leaning: none of the {total} answer(s) expressed any certainty."
    text = f"Leans {label}, confidence {confidence:.2f}"
    if unsure:
        return f"{text}, from only {informative} of {total} answers ({unsure} could not tell)."
    return f"{text}, from {total} answer(s)."

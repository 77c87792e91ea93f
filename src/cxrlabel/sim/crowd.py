"""Crowd presets: which personas arrive, in what mix, how fast, for how long.

A crowd is a TOML file (bundled presets live in ``sim/presets/``)::

    name = "realistic"
    [crowd]
    annotators = 400         # most annotators who may arrive
    arrivals_per_hour = 12   # Poisson arrivals while work is open
    max_days = 30            # the simulated clock stops here
    break_hours = 16         # mean break between two sessions of one annotator
    expert_accuracy = 0.95   # the radiologist answering the review queue
    [[persona]]
    kind = "average_novice"  # a persona from personas.PERSONAS
    share = 0.35             # fraction of arriving annotators
    accuracy = 0.74          # optional: override any Persona field
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrlabel.sim.personas import EXPERT_REVIEWER, PERSONAS, Persona, PersonaShare

PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_CROWD = "realistic"


class CrowdSpecError(ValueError):
    """A crowd file problem, phrased as one line for the user."""


@dataclass(frozen=True)
class CrowdSpec:
    name: str
    personas: tuple[PersonaShare, ...]
    annotators: int = 400
    arrivals_per_hour: float = 12.0
    max_days: float = 30.0
    break_hours: float = 16.0
    expert_accuracy: float = 0.95
    description: str = ""

    @property
    def expert(self) -> Persona:
        return replace(EXPERT_REVIEWER, accuracy=self.expert_accuracy)

    def persona(self, name: str) -> Persona:
        for entry in self.personas:
            if entry.persona.name == name:
                return entry.persona
        raise KeyError(name)

    def roster(self, rng: np.random.Generator, n: int | None = None) -> list[Persona]:
        """The personas of the first ``n`` arrivals, in arrival order.

        Quotas by largest remainder, then shuffled: a small crowd still has the stated mix
        (a pure random draw could give a 20-person crowd no spammer at all)."""
        n = self.annotators if n is None else n
        shares = np.array([entry.share for entry in self.personas], dtype=float)
        exact = shares / shares.sum() * n
        quota = np.floor(exact).astype(int)
        for index in np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]:
            quota[index] += 1
        roster = [
            entry.persona
            for entry, count in zip(self.personas, quota, strict=True)
            for _ in range(count)
        ]
        return [roster[i] for i in rng.permutation(len(roster))]

    def with_settings(self, **changes: Any) -> CrowdSpec:
        return replace(self, **changes)


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def load_crowd(name_or_path: str | Path = DEFAULT_CROWD) -> CrowdSpec:
    """A bundled preset by name (``realistic``, ``good``, ``hostile``) or a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix != ".toml" and (PRESETS_DIR / f"{candidate.name}.toml").exists():
        candidate = PRESETS_DIR / f"{candidate.name}.toml"
    elif not candidate.exists():
        raise CrowdSpecError(
            f"{name_or_path}: no such crowd file or preset (presets: {', '.join(preset_names())})"
        )
    try:
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CrowdSpecError(f"{candidate}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CrowdSpecError(f"{candidate}: cannot read crowd file: {exc}") from None
    return parse_crowd(data, str(candidate))


_CROWD_KEYS = {
    "annotators": int,
    "arrivals_per_hour": float,
    "max_days": float,
    "break_hours": float,
    "expert_accuracy": float,
}


def parse_crowd(data: dict[str, Any], source: str = "<crowd>") -> CrowdSpec:
    unknown = sorted(set(data) - {"name", "description", "crowd", "persona"})
    if unknown:
        raise CrowdSpecError(f"{source}: unknown top-level key(s): {', '.join(unknown)}")
    settings: dict[str, Any] = {}
    for key, value in data.get("crowd", {}).items():
        if key not in _CROWD_KEYS:
            raise CrowdSpecError(f"{source}: [crowd] has unknown key '{key}'")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise CrowdSpecError(f"{source}: [crowd] {key} must be a positive number")
        settings[key] = _CROWD_KEYS[key](value)
    if settings.get("expert_accuracy", 0.5) > 1:
        raise CrowdSpecError(f"{source}: [crowd] expert_accuracy must be at most 1")
    entries = data.get("persona")
    if not entries or not isinstance(entries, list):
        raise CrowdSpecError(f"{source}: needs at least one [[persona]] table")
    personas = tuple(_persona_entry(entry, i, source) for i, entry in enumerate(entries, 1))
    names = [entry.persona.name for entry in personas]
    if len(set(names)) != len(names):
        raise CrowdSpecError(f"{source}: persona names must be unique (use 'name' to rename)")
    return CrowdSpec(
        name=str(data.get("name", Path(source).stem)),
        personas=personas,
        description=str(data.get("description", "")),
        **settings,
    )


def _persona_entry(entry: dict[str, Any], index: int, source: str) -> PersonaShare:
    where = f"{source}: persona #{index}"
    entry = dict(entry)
    kind = entry.pop("kind", None)
    share = entry.pop("share", None)
    if kind not in PERSONAS:
        raise CrowdSpecError(f"{where}: 'kind' must be one of {', '.join(PERSONAS)}")
    if isinstance(share, bool) or not isinstance(share, int | float) or share < 0:
        raise CrowdSpecError(f"{where}: 'share' must be a number >= 0")
    try:
        persona = PERSONAS[kind].with_overrides(**entry)
    except (TypeError, ValueError) as exc:
        raise CrowdSpecError(f"{where}: {exc}") from None
    return PersonaShare(persona, float(share))


def single_persona_crowd(
    persona: str | Persona, annotators: int = 20, **settings: Any
) -> CrowdSpec:
    """A crowd of one persona (tests and sweeps)."""
    chosen = PERSONAS[persona] if isinstance(persona, str) else persona
    return CrowdSpec(
        name=chosen.name, personas=(PersonaShare(chosen, 1.0),), annotators=annotators, **settings
    )


def mixed_crowd(
    name: str, shares: dict[str, float], annotators: int = 40, **settings: Any
) -> CrowdSpec:
    """A crowd from persona names and shares (tests and sweeps)."""
    personas = tuple(PersonaShare(PERSONAS[key], share) for key, share in shares.items())
    return CrowdSpec(name=name, personas=personas, annotators=annotators, **settings)

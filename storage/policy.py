"""Credit policy and the one place where the price of a job is computed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.models import JobKind

# What each kind costs relative to an /imagine of the same size and work; one entry per job kind.
DEFAULT_MULTIPLIERS: dict[str, float] = {
    JobKind.IMAGINE: 1.0,
    JobKind.EDIT: 1.0,
    JobKind.EDIT_REMIX: 1.0,
    JobKind.OUTPAINT: 1.25,
    JobKind.INPAINT: 1.0,
    JobKind.MIX: 1.5,
    JobKind.HYPERNET_TRAIN: 1.0,
}


@dataclass(frozen=True)
class CostPolicy:
    """Prices, balances and limits. One instance is the bot-wide default; a guild may override any field
    through ``settings["cost_policy"]`` in its guild settings (see :func:`storage.settings.set_guild_policy`).

    * ``start_balance`` — credits a new account (per user per guild) starts with.
    * ``topup_floor`` / ``topup_period_s`` — at most once per period an account below the floor is raised to
      it. ``topup_period_s <= 0`` or ``topup_floor <= 0`` disables top-ups.
    * ``base`` — price of one ``ref_area`` image at ``ref_steps`` steps with multiplier 1.
    * ``step_overhead`` — fixed per-image work (text encoding, VAE decode) expressed in steps.
    * ``multipliers`` — per job kind; unknown kinds cost 1.0×.
    * ``max_queued_per_user`` — queued jobs one user may have at once (``QueueFull`` beyond it).
    """

    start_balance: int = 100
    topup_floor: int = 50
    topup_period_s: float = 86_400.0
    base: float = 4.0
    ref_area: int = 512 * 512
    ref_steps: int = 28
    step_overhead: float = 4.0
    multipliers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MULTIPLIERS))
    max_queued_per_user: int = 8

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> CostPolicy:
        """A copy with the known fields of ``overrides`` replaced; ``multipliers`` are merged, not replaced.
        Unknown keys are ignored so that an old settings blob never breaks the bot."""
        if not overrides:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {k: v for k, v in overrides.items() if k in names}
        if "multipliers" in changes:
            merged = dict(self.multipliers)
            merged.update({str(k): float(v) for k, v in dict(changes["multipliers"]).items()})
            changes["multipliers"] = merged
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["multipliers"] = dict(self.multipliers)
        return d

    @property
    def topups_enabled(self) -> bool:
        return self.topup_period_s > 0 and self.topup_floor > 0


def denoised_steps(steps: int, strength: float | None) -> int:
    """The steps a job denoises: ``steps``, or for image-to-image at ``strength`` ``int(steps * strength)``
    clamped to ``[1, steps]`` (what ``gen_core.engine.effective_img2img_steps`` runs)."""
    if strength is None:
        return steps
    return min(steps, max(1, int(steps * strength + 1e-6)))


def compute_cost(
    kind: str,
    width: int,
    height: int,
    steps: int,
    count: int = 1,
    strength: float | None = None,
    policy: CostPolicy | None = None,
) -> int:
    """Credits for a job. Pure; the only price formula in the project.

    Per image: ``base * (width*height / ref_area) * (step_overhead + effective_steps) /
    (step_overhead + ref_steps)``, where ``effective_steps`` is ``steps`` or, for image-to-image with a
    ``strength`` in [0, 1], the steps the engine actually denoises (:func:`denoised_steps`). The sum over
    ``count`` images is multiplied by the kind's multiplier and rounded up; the result is at least 1.
    Raises ``ValueError`` for non-positive sizes, steps or count or a strength outside [0, 1].
    """
    policy = policy or CostPolicy()
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    effective_steps = float(denoised_steps(steps, strength))
    area = (width * height) / policy.ref_area
    work = (policy.step_overhead + effective_steps) / (policy.step_overhead + policy.ref_steps)
    multiplier = float(policy.multipliers.get(kind, 1.0))
    raw = policy.base * area * work * count * multiplier
    # a tiny epsilon keeps exact prices (e.g. 4.0000000001 from float noise) from rounding up
    return max(1, math.ceil(raw - 1e-9))

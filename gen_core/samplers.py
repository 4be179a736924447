"""User-facing sampler names (A1111 spelling) mapped to diffusers schedulers.

Schedulers are built ``from_config`` of the checkpoint's own scheduler config, so the model's
training noise schedule (betas, prediction type, timestep spacing, offset) is kept and only the
sampling algorithm changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

# Imported from its module: the top-level name is a dummy when scipy is missing, and scipy is only
# used for the coefficients, which _ExactLMSScheduler computes without it.
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from numpy.polynomial import Polynomial


class _ExactLMSScheduler(LMSDiscreteScheduler):
    """diffusers' LMS with the multistep coefficients integrated exactly (no scipy needed).

    The integrand is a Lagrange basis polynomial in sigma, so its integral over
    ``[sigma_t, sigma_t+1]`` is exact with numpy; diffusers uses ``scipy.integrate.quad`` (rel. 1e-4).
    """

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        sigmas = [float(s) for s in self.sigmas]
        basis = Polynomial([1.0])
        for k in range(order):
            if k == current_order:
                continue
            root, at_one = sigmas[t - k], sigmas[t - current_order]
            basis = basis * Polynomial([-root, 1.0]) / (at_one - root)
        antiderivative = basis.integ()
        return float(antiderivative(sigmas[t + 1]) - antiderivative(sigmas[t]))


# name -> (scheduler class, settings overriding the checkpoint's config)
_TABLE: dict[str, tuple[type, dict[str, Any]]] = {
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "LMS": (_ExactLMSScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ 2M SDE Karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DDIM": (DDIMScheduler, {}),
    "UniPC": (UniPCMultistepScheduler, {}),
}

SAMPLERS: tuple[str, ...] = tuple(_TABLE)
DEFAULT_SAMPLER = "Euler a"

# Keys of a scheduler config that describe the model's noise schedule (kept from the checkpoint);
# everything else (solver order, Karras sigmas, ...) belongs to the sampler and is dropped, so a
# checkpoint shipping e.g. a Karras DPM++ config does not leak Karras sigmas into "Euler".
_MODEL_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
    "clip_sample",
    "set_alpha_to_one",
)

_BY_LOWER = {name.lower(): name for name in SAMPLERS}


def canonical_sampler(name: str) -> str:
    """The canonical spelling of a sampler name (case-insensitive); ``ValueError`` if unknown."""
    found = _BY_LOWER.get(str(name).strip().lower())
    if found is None:
        raise ValueError(f"Unknown sampler {name!r}; valid samplers are: {', '.join(SAMPLERS)}")
    return found


def make_scheduler(name: str, base_config: Mapping[str, Any]):
    """A fresh diffusers scheduler for sampler ``name`` built from the checkpoint's scheduler config."""
    cls, overrides = _TABLE[canonical_sampler(name)]
    config = {key: base_config[key] for key in _MODEL_KEYS if key in base_config}
    # Clipping the predicted x0 to [-1, 1] is for pixel-space diffusion; scaled latents go beyond it.
    # SD's own configs say so, but one that is silent (a PNDM config has no such key) must not
    # leave DDIM at its class default of clipping: it shifts every colour.
    config.setdefault("clip_sample", False)
    config.update(overrides)
    return cls.from_config(config)

"""lmcourse: the helper library of the course "Language models from the math up".

Notebooks import it as ``import lmcourse as lm``. Topic modules (``lm.lm_math``, ``lm.data``, ...)
load on first use, so importing the package stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmcourse.config import (
    Config,
    autocast,
    autocast_dtype,
    get_device,
    get_mode,
    is_offline,
    needs_grad_scaler,
    seed_everything,
    setup,
)
from lmcourse.exercises import check
from lmcourse.learner_progress import progress

__all__ = [
    "Config", "autocast", "autocast_dtype", "check", "get_device", "get_mode", "is_offline",
    "needs_grad_scaler", "progress", "seed_everything", "setup",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Load a topic module (lm.lm_math, lm.data, lm.plots, ...) the first time it is used."""
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise AttributeError(f"module 'lmcourse' has no attribute {name!r}") from None
        raise
    globals()[name] = module
    return module

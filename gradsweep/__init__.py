"""gradsweep: diagnose vanishing gradients layer by layer, and fix your model without rewriting it.

    import gradsweep
    notes = gradsweep.fix(model, x[:8], activation="gelu", init="kaiming")
    monitor = gradsweep.GradientMonitor(model, x[:2])
    ...  # in the loop, after loss.backward(): monitor.step(loss)
    print(monitor.diagnosis())

Names load on first use, so `import gradsweep` stays cheap (torch loads with the
first transform or monitor).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS = {
    "fix": "gradsweep.fixes.pipeline",
    "apply_fixes": "gradsweep.fixes.pipeline",
    "swap_activations": "gradsweep.fixes.activations",
    "insert_norms": "gradsweep.fixes.norms",
    "add_residual": "gradsweep.fixes.skips",
    "projection": "gradsweep.fixes.residual",
    "Residual": "gradsweep.fixes.residual",
    "Shortcut": "gradsweep.fixes.residual",
    "ShapeMismatchError": "gradsweep.errors",
    "initialize": "gradsweep.fixes.initialization",
    "weight_layers": "gradsweep.fixes.layers",
    "GradientMonitor": "gradsweep.telemetry.monitor",
    "Clipping": "gradsweep.telemetry.gradients",
    "Diagnosis": "gradsweep.telemetry.diagnosis",
    "GradientFlow": "gradsweep.telemetry.diagnosis",
}

__all__ = [
    "Clipping",
    "Diagnosis",
    "GradientFlow",
    "GradientMonitor",
    "Residual",
    "ShapeMismatchError",
    "Shortcut",
    "add_residual",
    "apply_fixes",
    "fix",
    "initialize",
    "insert_norms",
    "projection",
    "swap_activations",
    "weight_layers",
]

if TYPE_CHECKING:
    from gradsweep.errors import ShapeMismatchError
    from gradsweep.fixes.activations import swap_activations
    from gradsweep.fixes.initialization import initialize
    from gradsweep.fixes.layers import weight_layers
    from gradsweep.fixes.norms import insert_norms
    from gradsweep.fixes.pipeline import apply_fixes, fix
    from gradsweep.fixes.residual import Residual, Shortcut, projection
    from gradsweep.fixes.skips import add_residual
    from gradsweep.telemetry.diagnosis import Diagnosis, GradientFlow
    from gradsweep.telemetry.gradients import Clipping
    from gradsweep.telemetry.monitor import GradientMonitor


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradsweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

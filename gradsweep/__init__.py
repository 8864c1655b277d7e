"""gradsweep: diagnose vanishing gradients layer by layer, and fix your model without rewriting it.

    import gradsweep
    notes = gradsweep.fix(model, x[:8], activation="gelu", init="kaiming")
    monitor = gradsweep.GradientMonitor(model, x[:2])
    ...  # in the loop, after loss.backward(): monitor.step(loss)
    print(monitor.verdict())

Names load on first use, so `import gradsweep` stays cheap (torch loads with the
first transform or monitor).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS = {
    "fix": "gradsweep.fixes",
    "apply_fixes": "gradsweep.fixes",
    "swap_activations": "gradsweep.activations",
    "insert_norms": "gradsweep.norms",
    "add_residual": "gradsweep.skips",
    "projection": "gradsweep.skips",
    "Residual": "gradsweep.skips",
    "Shortcut": "gradsweep.skips",
    "ShapeMismatchError": "gradsweep.skips",
    "initialize": "gradsweep.initialization",
    "weight_layers": "gradsweep.layers",
    "GradientMonitor": "gradsweep.monitor",
    "Clipping": "gradsweep.telemetry",
    "Verdict": "gradsweep.diagnosis",
}

__all__ = [
    "Clipping",
    "GradientMonitor",
    "Residual",
    "ShapeMismatchError",
    "Shortcut",
    "Verdict",
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
    from gradsweep.activations import swap_activations
    from gradsweep.diagnosis import Verdict
    from gradsweep.fixes import apply_fixes, fix
    from gradsweep.initialization import initialize
    from gradsweep.layers import weight_layers
    from gradsweep.monitor import GradientMonitor
    from gradsweep.norms import insert_norms
    from gradsweep.skips import Residual, ShapeMismatchError, Shortcut, add_residual, projection
    from gradsweep.telemetry import Clipping


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradsweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

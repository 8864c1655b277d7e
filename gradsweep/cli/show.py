"""`gradsweep show OVERRIDES`: the model after the chosen fixes, before any training."""

from __future__ import annotations

import argparse
import os
import sys


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("show", help="print the model after the fixes, before training")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--code", action="store_true", help="print each forward the fixes rewrote")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the model after the chosen fixes, its size and the layers telemetry reports."""
    import torch

    from gradsweep.config import compose
    from gradsweep.data.sources import dataset_shape
    from gradsweep.fixes.layers import weight_layers
    from gradsweep.fixes.pipeline import apply_fixes
    from gradsweep.run.build import stream_seed
    from gradsweep.run.models import create_model
    from gradsweep.run.validate import check_config
    from gradsweep.telemetry.gradients import select_params

    cfg = compose(args.overrides, args.config_dir)
    check_config(cfg)
    input_shape, num_classes = dataset_shape(cfg.data)  # data=folder: from its images
    if os.getcwd() not in sys.path:
        # model._target_ names the user's module as `python train.py` would find it.
        sys.path.insert(0, os.getcwd())
    torch.manual_seed(stream_seed(cfg.seed, "init"))
    model = create_model(cfg.model, input_shape, num_classes)
    sample = torch.zeros(2, *input_shape)
    accounts = apply_fixes(model, cfg, sample)
    layers = weight_layers(model, sample)
    params = sum(p.numel() for p in model.parameters())
    print(model)
    print("\nfixes applied (activation -> norm -> skip -> init):")
    for line in accounts or ["none: the model as it is"]:
        print(f"  {line}")
    print(f"\nparameters: {params:,}")
    print(f"weight layers (forward order), {len(layers)}: telemetry indexes layers this way")
    for index, name in enumerate(layers):
        print(f"  {index:>3}  {name}")
    logged = select_params(model, cfg.telemetry.params, layers)
    spec = cfg.telemetry.params
    print(f"gradient norms logged: {len(logged)} parameters (telemetry.params={spec})")
    _print_rewritten_forwards(model, args.code)
    return 0


def _print_rewritten_forwards(model, code: bool) -> None:
    """Forwards the fixes rewrote (calls in forward live in code, not in the module tree)."""
    rewritten = [
        (name or "(model)", type(m)._gradsweep_source)
        for name, m in model.named_modules()
        if hasattr(type(m), "_gradsweep_source")
    ]
    if not rewritten:
        return
    names = ", ".join(name for name, _ in rewritten)
    if not code:
        print(f"forwards rewritten through torch.fx: {names} (--code prints them)")
        return
    for name, source in rewritten:
        print(f"\nforward of {name}, as the fixes rewrote it:\n{source.strip()}")

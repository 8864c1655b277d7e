"""Checks of a composed config, run before anything heavy (data, model, W&B).

Every problem is reported at once, each with the override that fixes it. Hydra
already rejects unknown group options (listing the choices) and unknown keys.
"""

from __future__ import annotations

import dataclasses
import logging
from numbers import Real

from omegaconf import DictConfig, OmegaConf

from gradsweep.config import DATA_SOURCES, LOGGER_MODES, is_custom
from gradsweep.data.folders import FOLDER, config_problems
from gradsweep.errors import ConfigError
from gradsweep.fixes.activations import ACTIVATIONS
from gradsweep.fixes.residual import PLACEMENTS
from gradsweep.telemetry.diagnosis import Thresholds

log = logging.getLogger(__name__)

TELEMETRY_PARAMS = ("all", "weights")
PRECISIONS = ("32", "bf16")


def _number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value in `cfg`; warn on risky ones."""
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    def positive(key: str, integer: bool = False, minimum: float = 0.0, strict: bool = True):
        value = OmegaConf.select(cfg, key)
        kind = "an integer" if integer else "a number"
        if not (_integer(value) if integer else _number(value)):
            problems.append(f"{key}={value!r} must be {kind}; e.g. {key}={1 if integer else 0.1}")
            return
        bad = value <= minimum if strict else value < minimum
        relation = ">" if strict else ">="
        need(not bad, f"{key}={value} must be {relation} {minimum:g}")

    if is_custom(cfg.model):
        need(
            not OmegaConf.is_missing(cfg.model, "_target_"),
            "model=custom needs your model's class: model._target_=my_package.my_module.MyNet",
        )
    else:
        positive("model.depth", integer=True, minimum=1, strict=False)
        positive("model.width", integer=True, minimum=1, strict=False)

    need(_integer(cfg.seed), f"seed={cfg.seed!r} must be an integer")
    positive("optimizer.lr")
    if "momentum" in cfg.optimizer:
        positive("optimizer.momentum", strict=False)
    positive("optimizer.weight_decay", strict=False)

    positive("data.batch_size", integer=True, minimum=1, strict=False)
    if "val_size" in cfg.data:  # data=folder holds out data.val_fraction instead
        positive("data.val_size", integer=True, minimum=1, strict=False)
    if cfg.data.name == FOLDER:
        problems.extend(config_problems(cfg.data))
    need(
        cfg.data.source in DATA_SOURCES,
        f"data.source={cfg.data.source!r}: choose one of {list(DATA_SOURCES)}",
    )
    need(
        not (cfg.data.source == "bundled" and cfg.data.name != "mnist"),
        f"data.source=bundled exists for MNIST only; for {cfg.data.name} use data.source=full",
    )

    activation = cfg.activation.name
    need(activation in [*ACTIVATIONS, "keep"], f"activation={activation!r} is unknown")
    if activation == "leaky_relu":
        positive("activation.negative_slope", strict=False)

    if cfg.norm.name == "group":
        positive("norm.num_groups", integer=True, minimum=1, strict=False)
        groups, width = cfg.norm.num_groups, cfg.model.get("width")
        if _integer(groups) and groups >= 1 and _integer(width) and width % groups:
            problems.append(
                f"norm.num_groups={groups} does not divide model.width={width}; "
                f"use a divisor of {width} (e.g. norm.num_groups={_divisor(width, groups)})"
            )
    if cfg.norm.name == "batch" and _integer(cfg.data.batch_size):
        if cfg.data.batch_size < 2:
            problems.append(
                f"norm=batch cannot train on data.batch_size={cfg.data.batch_size}: batch "
                "statistics need two samples; use norm=layer or norm=group"
            )
        elif cfg.data.batch_size < 8:
            log.warning(
                "norm=batch with data.batch_size=%d: batch statistics this noisy hurt; "
                "use norm=layer or norm=group",
                cfg.data.batch_size,
            )

    if cfg.skip.name == "residual":
        positive("skip.block_size", integer=True, minimum=1, strict=False)
        positive("skip.count", integer=True, minimum=1, strict=False)
        need(
            cfg.skip.placement in PLACEMENTS,
            f"skip.placement={cfg.skip.placement!r}: choose one of {list(PLACEMENTS)}",
        )

    if cfg.clipping.name == "norm":
        positive("clipping.max_norm")
        positive("clipping.norm_type")
    elif cfg.clipping.name == "value":
        positive("clipping.clip_value")

    trainer = cfg.trainer
    positive("trainer.max_epochs", integer=True, minimum=1, strict=False)
    if trainer.max_steps is not None:
        positive("trainer.max_steps", integer=True, minimum=1, strict=False)
    positive("trainer.eval_every", integer=True, minimum=1, strict=False)
    positive("trainer.checkpoint_every", integer=True, minimum=1, strict=False)
    need(
        str(trainer.precision) in PRECISIONS,
        f"trainer.precision={trainer.precision!r}: choose one of {list(PRECISIONS)}",
    )
    need(
        isinstance(trainer.compile, (bool, str)),
        f"trainer.compile={trainer.compile!r}: use false, true or a torch.compile backend name",
    )

    telemetry = cfg.telemetry
    positive("telemetry.log_every_n_steps", integer=True, minimum=1, strict=False)
    positive("telemetry.window", integer=True, minimum=1, strict=False)
    positive("telemetry.activations_every", integer=True, minimum=0, strict=False)
    for field in dataclasses.fields(Thresholds):
        positive(f"telemetry.{field.name}")
    need(
        isinstance(telemetry.params, str), "telemetry.params must be none, all, weights or a regex"
    )

    if cfg.logger.name != "none":
        need(
            cfg.logger.mode in LOGGER_MODES,
            f"logger.mode={cfg.logger.mode!r}: choose one of {list(LOGGER_MODES)}",
        )
        positive("logger.init_timeout")
        niceness = cfg.logger.get("niceness", 0)
        need(
            _integer(niceness) and 0 <= niceness <= 19,
            f"logger.niceness={niceness!r}: use an integer from 0 (no change) to 19 (lowest)",
        )

    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _divisor(width: int, near: int) -> int:
    """The divisor of `width` closest to `near`, for the error message's example."""
    return min((d for d in range(1, width + 1) if width % d == 0), key=lambda d: abs(d - near))

"""Optimizers by name."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _sgd(params: Iterable, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _adam(params: Iterable, cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _adamw(params: Iterable, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# Name -> builder(params, optimizer config). A new optimizer goes here.
OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def create_optimizer(cfg, params: Iterable) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](params, cfg)

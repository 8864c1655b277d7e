"""Train one configuration: `python train.py activation=gelu norm=layer`.

A grid: `python train.py -m activation=sigmoid,relu,gelu norm=none,batch`.
Every option is a config group under conf/; see README.md.
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import gradsweep.config  # noqa: F401  registers the resolver of hydra.run.dir (conf/train.yaml)
from gradsweep.run.entry import user_error_on_bad_overrides
from gradsweep.tracking.tracker import prestart


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # Started first, the W&B writer process imports wandb while this one imports torch.
    prestart(cfg.logger)
    from gradsweep.errors import EXIT_NON_FINITE, EXIT_USER_ERROR, USER_ERRORS
    from gradsweep.run.training import train

    # In a multirun, a failed job is recorded by the launcher and the next one runs: a
    # SystemExit would stop the basic launcher's whole grid, so only a lone run exits.
    alone = HydraConfig.get().mode == RunMode.RUN
    try:
        result = train(cfg)
    except USER_ERRORS as error:
        logging.getLogger("gradsweep").error("%s", error)
        if alone:
            sys.exit(EXIT_USER_ERROR)
        raise
    if alone and result.non_finite_step is not None:
        sys.exit(EXIT_NON_FINITE)
    # The validation accuracy is what Hydra's optimizing sweepers read.
    return result.val_acc


if __name__ == "__main__":
    # A command line Hydra cannot compose (activation=gelx) exits 2, bad input, not Hydra's 1.
    with user_error_on_bad_overrides():
        main()

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

from gradsweep.errors import USER_ERRORS
from gradsweep.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        # The validation accuracy is what Hydra's optimizing sweepers read.
        return train(cfg)
    except USER_ERRORS as error:
        logging.getLogger("gradsweep").error("%s", error)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # let the launcher record this job as failed and go on
        sys.exit(2)


if __name__ == "__main__":
    main()

"""One training run: building it (model, optimizer, seeds, device), the loop, the checks of
its config, checkpoints, and what a person reads at the end (console, pictures, summary).

`training.train(cfg, run_dir)` is the entry point; `train.py` is a thin `@hydra.main` over it.
"""

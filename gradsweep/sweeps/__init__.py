"""Sweeps: W&B sweep definitions, the offline runner, and the comparison of a sweep's runs
(`gradsweep summarize`, `gradsweep report`)."""

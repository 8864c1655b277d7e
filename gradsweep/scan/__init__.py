"""`gradsweep scan`: every configuration of a fix grid measured at initialization, and the
report that predicts which ones are dead on arrival."""

"""Example models for `model=custom`: plain nn.Modules as users write them."""

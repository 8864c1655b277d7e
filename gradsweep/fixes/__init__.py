"""The fixes: transforms of any `nn.Module`, applied activation -> norm -> skip -> init.

pipeline (the order, from a config or keyword arguments), activations, norms, skips and
initialization (one registry and one transform each), and the machinery they share: layers
(what a weight layer is, in forward order) and graphs (torch.fx, for calls in `forward`).
"""

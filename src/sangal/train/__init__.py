"""Training on one loop (``engine``): the attribute net, the Re-ID net (ID, triplet, attribute losses, §4.1.2) and
the distilled map predictor. Reads datasets (``data``) and heat maps (``aah``); writes checkpoints that resume."""

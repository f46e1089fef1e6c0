"""Attribute Attention Heat maps (paper §3.2): exact Grad-CAM, forward-only fast maps, map modes, the offline cache,
crop alignment and the distilled map predictor. Reads a trained attribute checkpoint and images; hands (B, K, h, w)
maps per stage to ASAM in ``train``, ``evaluate``, ``search`` and ``export``."""

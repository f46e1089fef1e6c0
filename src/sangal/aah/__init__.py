"""Attribute Attention Heat maps (paper §3.2): the map spec, exact Grad-CAM, forward-only fast maps, map modes, the
offline cache and crop alignment. Reads a trained attribute checkpoint and images; hands (B, K, h, w) maps per stage
to ASAM in ``train``, ``evaluate``, ``search`` and ``export``."""

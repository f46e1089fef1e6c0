"""Training, evaluation and storage machinery.

Modules (import them directly; this package imports nothing heavy itself):

* :mod:`sangal.engine.checkpoint` -- atomic checkpoint directories
  (``model.safetensors``, ``optimizer.safetensors``, ``state.json``), RNG
  capture/restore, rebuilding a model from its ``arch`` dict, refusing weights
  of another architecture.
* :mod:`sangal.engine.aah_cache` -- offline Attribute Attention Heat-map cache
  (paper §3.1, special skill 3): memory-mapped float16 Grad-CAM maps bound to
  the attribute checkpoint and image list they came from; chunked, resumable.
* :mod:`sangal.engine.features` -- feature extraction for retrieval (flip
  averaging, L2 normalisation, attribute probabilities).
* ``train_attr``, ``train_reid``, ``distributed``, ``demo``, ``logging`` --
  training loops and helpers (see docs/design.md).
"""

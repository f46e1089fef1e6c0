"""Evaluation of a trained Re-ID model: flip-averaged features (with heat maps in san-gal mode), then CMC/mAP.
Reads checkpoints (``store``) and test-time maps (``aah``); gives metrics to ``train``, ``experiments`` and the CLI."""

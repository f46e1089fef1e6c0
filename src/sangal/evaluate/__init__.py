"""Test time on one path: a checkpoint's ``Predictor`` (features, attribute probabilities, the maps it used), then
CMC / mAP / mINP. Reads checkpoints (``store``) and maps (``aah``); serves training, experiments, search, export."""

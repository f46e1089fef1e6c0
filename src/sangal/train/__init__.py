"""Training: the attribute network's pretraining and the Re-ID loops (ID, triplet and attribute losses, §4.1.2).
Reads datasets (``data``) and heat maps (``aah``); writes resumable checkpoints (``store``) and run logs."""

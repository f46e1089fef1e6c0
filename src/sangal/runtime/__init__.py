"""Where and how tensors run: device choice, torch.distributed process groups, bf16 autocast and channels-last.
Configured from ``train.device``/``train.amp``; used by the heat-map builder, the training loops and evaluation."""

"""Persistence: atomic files and directories, outputs that never land on inputs, safetensors checkpoints that resume, the folder layout of a run.
Takes models and state from ``train``/``aah``; gives back models (via ``models.arch``) and paths to every later step."""

"""The step engine and the run around it: building a run from a recipe, the objective-ready
data, the step, the trainer, checkpoints, memory methods, metrics, reporting, exports, ``objkit run``.

Layer 6 of objkit/ (docs/development.md, "Layers"; tests/test_layers.py)."""

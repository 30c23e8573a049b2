"""The plugin contract: what a plugin sees and the kinds it implements (objectives, encoders,
stores, augmentations, sources, evaluators, optimizers, schedules, callbacks), their contexts,
the registry, the hook specification, trainer events and errors. Imports nothing else of objkit.

Layer 0 of objkit/ (docs/development.md, "Layers"; tests/test_layers.py)."""

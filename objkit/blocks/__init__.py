"""Public building blocks plugins compose: the LM head, masking, momentum encoders, InfoNCE,
sample seeding, the masked-LM encoder base, where a pretrained model lives.

Layer 1 of objkit/ (docs/development.md, "Layers"; tests/test_layers.py)."""

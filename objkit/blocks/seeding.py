"""Randomness that belongs to a sample, not to the rank or micro-batch that happens to process it.

For a run on 1 rank with micro-batch B and a run on 2 ranks with micro-batch B/2 to see the
same global batch, every random decision about an example (which tokens are masked, which
side of a pair is the query, whether and how it is mixed) must be a function of the run's
seed and the example's identity only. The composite gives every example it draws a
``sample_seed`` (:data:`SAMPLE_SEED`): a 63-bit hash of ``(train.seed, objective instance,
step, position of the example in the step's global batch)``. Plugins derive per-purpose
streams from it with :func:`derive_seed` / :func:`sample_generator`, so two uses of one
sample never share random numbers.

Examples without a ``sample_seed`` (a plugin called directly, e.g. in tests) get seeds drawn
from the micro-batch ``generator`` instead (:func:`example_seeds`): deterministic, but then
tied to the batch they were collated in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

SAMPLE_SEED = "sample_seed"
"""Key of the per-example seed the composite adds to every example before ``collate``."""

_MASK63 = 2**63 - 1


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (blake2b of ``"a/b/c"``)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def sample_seed(seed: int, objective: str, step: int, index: int) -> int:
    """The seed of the ``index``-th example of ``objective``'s global batch at ``step``."""
    return derive_seed(seed, objective, step, index)


def example_seeds(examples: Sequence[dict[str, Any]], generator: torch.Generator) -> list[int]:
    """Each example's ``sample_seed``; examples without one get seeds drawn from ``generator``."""
    if examples and all(SAMPLE_SEED in e for e in examples):
        return [int(e[SAMPLE_SEED]) for e in examples]
    return torch.randint(0, _MASK63, (len(examples),), generator=generator).tolist()


def sample_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose (``"mask"``, ``"mixup"``, ...) of one sample."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose))


def sample_uniform(seed: int, purpose: str) -> float:
    """One uniform number in ``[0, 1)`` for one purpose of one sample (no generator needed)."""
    return derive_seed(seed, purpose) / 2**63


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (``train.seed``: up to 2**63 - 1;
    NumPy takes it modulo 2**32). What the trainer does before building the model."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


__all__ = ["SAMPLE_SEED", "derive_seed", "example_seeds", "sample_generator", "sample_seed", "sample_uniform", "seed_everything"]


"""Checks for NegativeStore and Augmentation plugins."""

from __future__ import annotations


import copy

import torch

from objkit.contract.interfaces import Augmentation, NegativeStore, PluginConfig, WorldInfo

from objkit.testing._common import CPU, assert_same_state, build_context, checkpoint_round_trip, dummy_source, registry_with, tiny_encoder


# ----------------------------------------------------------------------------- checks: negative stores
def _keys(count: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def check_negative_store(cls: type, config: PluginConfig, *, dim: int = 8, batches: int = 3) -> None:
    """``negatives`` gives ``[K, dim]``; ``includes_current_keys`` holds when declared; state
    survives a checkpoint round trip (equal state, negatives and readiness); equal inputs
    give equal outputs."""
    def fed() -> NegativeStore:
        store = cls(config, dim=dim, device=CPU, world=WorldInfo())
        for i in range(batches):
            store.enqueue(_keys(5, dim, i))
        return store

    store = fed()
    current = _keys(4, dim, 100)
    negatives = store.negatives(current)
    assert negatives.dim() == 2 and negatives.shape[1] == dim, f"{cls.name}: negatives shape {tuple(negatives.shape)}"
    if cls.includes_current_keys:
        assert torch.equal(negatives[: current.shape[0]].float(), current.float()), (
            f"{cls.name}: includes_current_keys is True but rows [0, B) are not the current keys"
        )
    clone = cls(config, dim=dim, device=CPU, world=WorldInfo())
    clone.load_state_dict(checkpoint_round_trip(store.state_dict()))
    assert_same_state(store.state_dict(), clone.state_dict())
    assert torch.equal(store.negatives(current), clone.negatives(current)), f"{cls.name}: restored negatives differ"
    assert store.ready == clone.ready, f"{cls.name}: restored ready differs"
    assert torch.equal(fed().negatives(current), fed().negatives(current)), f"{cls.name}: not deterministic"


# ----------------------------------------------------------------------------- checks: augmentations
def check_augmentation(cls: type, config: PluginConfig, *, seed: int = 3) -> None:
    """``prepare`` keeps ``group``; ``apply`` returns rows of the data kind's layout, takes
    all randomness from the generator (equal outputs for equal seeds, whatever the global
    RNG state) and does not depend on the caller keeping its input unchanged."""
    encoder = tiny_encoder()
    augmentation = cls(config, build_context(encoder, registry=registry_with(cls)))
    prepared = augmentation.prepare(dummy_source(cls.data_kind, seed=seed))
    assert "group" in prepared.column_names, f"{cls.name}: prepare() dropped the group column"
    examples = [prepared[i] for i in range(min(16, len(prepared)))]
    torch.manual_seed(1)
    a = augmentation.apply(copy.deepcopy(examples), torch.Generator().manual_seed(seed))
    torch.manual_seed(2)
    b = augmentation.apply(copy.deepcopy(examples), torch.Generator().manual_seed(seed))
    assert a == b, f"{cls.name}: apply() differs for equal generator seeds"
    assert len(a) > 0, f"{cls.name}: apply() returned no examples"
    needed = ("input_ids",) if cls.data_kind == "text" else ("src_ids", "tgt_ids")
    for row in a:
        assert all(k in row for k in needed), f"{cls.name}: apply() row lacks {needed}: {sorted(row)}"



"""Checks for Encoder plugins: the contract objectives and evaluators rely on (docs/plugin-api.md §7).

Each check builds the encoder from a ``[model]`` table through its own ``build(config, ctx)``
(fresh weights, no download), puts it in eval mode and compares it with itself and with its
export: layer truncation, the LM head at selected positions, the momentum copy, FSDP units,
the token-type table, and the export round trip through ``transformers.AutoModel`` /
``AutoModelForMaskedLM``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from objkit.contract.interfaces import Encoder, EncoderContext

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def build_encoder(cls: type, table: dict[str, Any], *, vocab_size: int = 96, seed: int = 0) -> Encoder:
    """``cls.build(Config(table), EncoderContext(vocab_size))`` in eval mode, weights from ``seed``."""
    config = cls.Config.model_validate(copy.deepcopy(table))
    torch.manual_seed(seed)
    encoder = cls.build(config, EncoderContext(vocab_size=vocab_size, load_weights=True))
    assert isinstance(encoder, Encoder), f"{cls.name}.build returned {type(encoder).__name__}, not an Encoder"
    return encoder.eval()


def encoder_batch(encoder: Encoder, *, rows: int = 3, length: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (above the first 5, where special tokens live) with right padding: row ``i``
    is ``length - 2 * i`` tokens long."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, encoder.vocab_size, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    for row in range(1, rows):
        mask[row, length - 2 * row:] = 0
    return ids, mask


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert torch.allclose(got, want, **TOLERANCE), f"{what}: max difference {(got - want).abs().max().item():.3g}"


def _depths(encoder: Encoder) -> list[int]:
    return sorted({0, 1, encoder.num_layers // 2, encoder.num_layers - 1, encoder.num_layers} - {-1})


def check_encoder_build(cls: type, table: dict[str, Any]) -> None:
    """``build`` gives an encoder whose attributes describe it, and builds on the meta device
    without weights (``--dry-run``)."""
    encoder = build_encoder(cls, table)
    assert encoder.num_layers > 0 and encoder.hidden_size > 0 and encoder.vocab_size == 96, (
        f"{cls.name}: num_layers={encoder.num_layers}, hidden_size={encoder.hidden_size}, vocab_size={encoder.vocab_size}")
    ids, mask = encoder_batch(encoder)
    states = encoder(ids, mask)
    assert len(states) == encoder.num_layers + 1, f"{cls.name}: {len(states)} hidden states for {encoder.num_layers} layers"
    assert states[-1].shape == (*ids.shape, encoder.hidden_size)
    with torch.device("meta"):
        meta = cls.build(cls.Config.model_validate(copy.deepcopy(table)), EncoderContext(vocab_size=96, load_weights=False))
    assert all(p.device.type == "meta" for p in meta.parameters()), f"{cls.name}: build on the meta device allocated weights"


def check_encoder_truncation(cls: type, table: dict[str, Any]) -> None:
    """``forward(..., up_to_layer=L)`` returns ``L + 1`` states equal to the full pass's first ``L + 1``."""
    encoder = build_encoder(cls, table)
    ids, mask = encoder_batch(encoder)
    with torch.no_grad():
        full = encoder(ids, mask)
        for depth in _depths(encoder):
            cut = encoder(ids, mask, up_to_layer=depth)
            assert len(cut) == depth + 1, f"{cls.name}: up_to_layer={depth} returned {len(cut)} hidden states"
            _close(cut[depth], full[depth], f"{cls.name}: layer {depth} of a truncated pass vs the full pass")
        again = encoder(ids, mask)
    assert len(again) == len(full), f"{cls.name}: a truncated pass left the encoder with fewer blocks"


def check_encoder_lm_head(cls: type, table: dict[str, Any], directory: str | Path | None = None) -> None:
    """``lm_logits`` on gathered positions equals the full ``[B, T, V]`` logits of the exported
    masked LM (``AutoModelForMaskedLM``) at those positions."""
    from transformers import AutoModelForMaskedLM

    encoder = build_encoder(cls, table)
    ids, mask = encoder_batch(encoder)
    selected = mask.bool() & (torch.arange(ids.shape[1]) % 3 == 1)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(directory or tmp)
        encoder.save_pretrained(str(where))
        reference = AutoModelForMaskedLM.from_pretrained(str(where)).eval()
    with torch.no_grad():
        hidden = encoder(ids, mask)[-1]
        logits = encoder.lm_logits(hidden[selected])
        full = reference(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (int(selected.sum()), encoder.vocab_size), f"{cls.name}: lm_logits shape {tuple(logits.shape)}"
    _close(logits, full[selected], f"{cls.name}: LM head at positions vs AutoModelForMaskedLM's full logits")


def check_encoder_momentum_copy(cls: type, table: dict[str, Any]) -> None:
    """``momentum_copy(N)`` is frozen fp32, holds the first ``N`` blocks only, runs like
    ``forward(..., up_to_layer=N)``, pairs with ``body()`` by parameter name, and is a copy."""
    from objkit.blocks.momentum import MomentumTracker

    encoder = build_encoder(cls, table)
    ids, mask = encoder_batch(encoder)
    full_copy = encoder.momentum_copy(None)
    for depth in sorted({1, max(1, encoder.num_layers // 2)}):
        copy_ = encoder.momentum_copy(depth).eval()
        params = list(copy_.parameters())
        assert params and not any(p.requires_grad for p in params), f"{cls.name}: momentum copy is not frozen"
        assert all(p.dtype == torch.float32 for p in params), f"{cls.name}: momentum copy is not fp32"
        if depth < encoder.num_layers:
            assert sum(p.numel() for p in params) < sum(p.numel() for p in full_copy.parameters()), (
                f"{cls.name}: momentum_copy({depth}) holds more than {depth} of {encoder.num_layers} blocks")
        units = copy_.shard_units()
        assert not units or len(units) == depth, f"{cls.name}: momentum_copy({depth}) has {len(units)} FSDP units"
        tracker = MomentumTracker.between(encoder.body(), copy_.body)
        assert tracker.numel() == sum(p.numel() for p in params), f"{cls.name}: copy parameters do not pair with body()"
        with torch.no_grad():
            got = copy_(ids, mask, up_to_layer=depth)[depth]
            want = encoder(ids, mask, up_to_layer=depth)[depth]
            _close(got, want, f"{cls.name}: momentum_copy({depth}) vs forward(up_to_layer={depth})")
            for p in encoder.body().parameters():
                p.add_(0.5)
            after = copy_(ids, mask, up_to_layer=depth)[depth]
            for p in encoder.body().parameters():
                p.sub_(0.5)
        assert torch.equal(after, got), f"{cls.name}: momentum copy shares weights with the encoder"


def check_encoder_shard_units(cls: type, table: dict[str, Any]) -> None:
    """``shard_units()`` are distinct submodules of the encoder (FSDP shards each on its own)."""
    encoder = build_encoder(cls, table)
    units = encoder.shard_units()
    inside = {id(m) for m in encoder.modules()}
    assert all(id(u) in inside for u in units), f"{cls.name}: a shard unit is not a submodule of the encoder"
    assert len({id(u) for u in units}) == len(units), f"{cls.name}: a shard unit is listed twice"


def check_encoder_export(cls: type, table: dict[str, Any], directory: str | Path | None = None) -> None:
    """``save_pretrained`` writes a directory ``transformers.AutoModel`` loads, whose hidden states
    equal the encoder's at every layer."""
    from transformers import AutoModel

    encoder = build_encoder(cls, table)
    ids, mask = encoder_batch(encoder)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(directory or tmp)
        encoder.save_pretrained(str(where))
        model = AutoModel.from_pretrained(str(where)).eval()
    with torch.no_grad():
        ours = encoder(ids, mask)
        theirs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(theirs) == len(ours), f"{cls.name}: AutoModel has {len(theirs) - 1} layers, the encoder {len(ours) - 1}"
    for layer, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        _close(a, b, f"{cls.name}: layer {layer} after export through AutoModel")


def check_encoder_token_types(cls: type, table: dict[str, Any]) -> None:
    """``resize_token_types(n)`` keeps what the encoder computed for token type 0 and accepts
    ids up to ``n - 1`` (skipped for encoders without a token-type table)."""
    from objkit.contract.errors import UserError

    encoder = build_encoder(cls, table)
    ids, mask = encoder_batch(encoder)
    with torch.no_grad():
        before = encoder(ids, mask)[-1]
        try:
            encoder.resize_token_types(4)
        except UserError:
            return
        types = torch.zeros_like(ids)
        _close(encoder(ids, mask, token_type_ids=types)[-1], before, f"{cls.name}: token type 0 after resize_token_types")
        types[:, 1] = 3
        encoder(ids, mask, token_type_ids=types)


def check_encoder(cls: type, table: dict[str, Any]) -> None:
    """Every encoder check with one ``[model]`` table."""
    for check in (check_encoder_build, check_encoder_truncation, check_encoder_lm_head, check_encoder_momentum_copy,
                  check_encoder_shard_units, check_encoder_export, check_encoder_token_types):
        check(cls, table)

"""Both built-in encoders pass objkit's encoder conformance harness (objkit.testing.EncoderConformance)."""

from __future__ import annotations

import pytest
import torch

from objkit.testing import EncoderConformance

TINY = {"num_layers": 3, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "tokenizer": "unused",
        "max_length": 32, "dropout": 0.0}


class TestXLMREncoder(EncoderConformance):
    plugin = "xlmr"
    distribution = "objkit"
    configs = [TINY]
    bad_configs = [{**TINY, "num_heads": 0}, {"tokenizer": "unused"}, {**TINY, "preset": "huge"}]


class TestBertEncoder(EncoderConformance):
    plugin = "bert"
    distribution = "objkit"
    configs = [TINY, {**TINY, "encoder": "bert", "num_layers": 2}]
    bad_configs = [{**TINY, "dropout": 1.5}, {"max_length": 64}]


def test_the_harness_catches_an_encoder_whose_truncated_pass_differs():
    """The truncation check can fail: an encoder that skips the last block's residual on a
    truncated pass is refused."""
    from objkit.bert import BertEncoder
    from objkit.testing import check_encoder_truncation

    class Skewed(BertEncoder):
        name = "skewed"

        def forward(self, input_ids, attention_mask, up_to_layer=None, position_ids=None, token_type_ids=None):
            states = super().forward(input_ids, attention_mask, up_to_layer, position_ids, token_type_ids)
            if up_to_layer is not None and up_to_layer > 0:
                states[-1] = states[-1] + 1e-3 * torch.ones_like(states[-1])
            return states

    with pytest.raises(AssertionError, match="truncated pass"):
        check_encoder_truncation(Skewed, TINY)


def test_the_harness_catches_a_momentum_copy_sharing_weights():
    from objkit.bert import BertEncoder
    from objkit.interfaces import MomentumCopy
    from objkit.encoder import run_body
    from objkit.testing import check_encoder_momentum_copy

    class Shared(BertEncoder):
        name = "shared"

        def momentum_copy(self, depth=None):
            body = self.body()
            for p in body.parameters():
                p.requires_grad_(False)
            return MomentumCopy(body, run_body, units=list(body.encoder.layer))

    with pytest.raises(AssertionError):
        check_encoder_momentum_copy(Shared, TINY)

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
    from objkit.contract.interfaces import MomentumCopy
    from objkit.blocks.encoder import run_body
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


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["xlmr", "bert"])
def test_encoders_on_cuda_under_bf16_autocast(name):
    """On a GPU, under the trainer's bf16 autocast: a truncated pass equals the full pass's layer
    and the LM head at positions gives the vocabulary's logits (SDPA's CUDA kernels)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from objkit.contract.registry import Registry
    from objkit.testing.encoders import build_encoder, encoder_batch

    cls = Registry.from_entry_points().get(name, kind="encoder").cls
    encoder = build_encoder(cls, TINY).cuda()
    ids, mask = (t.cuda() for t in encoder_batch(encoder))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = encoder(ids, mask)
        cut = encoder(ids, mask, up_to_layer=2)
        logits = encoder.lm_logits(full[-1][mask.bool()])
    torch.testing.assert_close(cut[2].float(), full[2].float(), rtol=2e-2, atol=2e-2)
    assert logits.shape == (int(mask.sum()), encoder.vocab_size) and torch.isfinite(logits.float()).all()


def _bert_layout_vocab():
    from objkit.contract.interfaces import VocabInfo

    return VocabInfo(bos_id=2, eos_id=3, mask_id=4, pad_id=0, vocab_size=96, special_ids=(0, 1, 2, 3, 4))


@pytest.mark.parametrize(("plugin", "table"), [
    ("mlm", {}),
    ("tlm", {"reset_positions": True, "language_embeddings": True, "languages": ["en", "de", "fr", "cs"]}),
    ("xlco", {"layer": 2, "pooling": "mean", "normalize": True, "temperature": 0.05, "projection": False,
              "mask_inputs": False, "momentum": 0.99, "negatives": {"in_batch": {}}}),
])
def test_builtin_objectives_train_the_bert_encoder_unchanged(plugin, table):
    """MLM, TLM (position resets from BERT's first position, language embeddings in its token-type
    table) and XLCO (momentum copy of BERT's first blocks) build on a tiny bert encoder in BERT's
    token layout and put finite gradients on it."""
    from objkit.bert import BertEncoder
    from objkit.contract.interfaces import StepContext
    from objkit.testing import build_context, dummy_source, installed_registry
    from objkit.testing.encoders import build_encoder

    registry = installed_registry()
    encoder = build_encoder(BertEncoder, TINY).train()
    cls = registry.get(plugin, kind="objective").cls
    vocab = _bert_layout_vocab()
    objective = cls(cls.Config.model_validate(table), build_context(encoder, registry=registry, vocab=vocab))
    rows = objective.prepare(dummy_source(cls.data_kind, vocab))
    batch = objective.collate([rows[i] for i in range(8)], torch.Generator().manual_seed(0))
    if "position_ids" in batch:  # BERT counts from 0; padding gets position 0, never XLM-R's pad + 1 offset
        assert int(batch["position_ids"].min()) == 0 and int(batch["position_ids"].max()) < 32
    out = objective.compute(batch, StepContext(step=0, encoder=encoder, device=torch.device("cpu")))
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if plugin == "tlm":
        assert encoder.body().embeddings.token_type_embeddings.num_embeddings == 4

"""xlm_align (denoising word alignment): Sinkhorn, itermax, self-labels, pointer loss, order bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from objkit.eval.align import itermax_links
from objkit.contract.interfaces import StepContext, VocabInfo
from objkit.blocks.masking import IGNORE_INDEX
from objkit.blocks.seeding import SAMPLE_SEED, sample_seed
from objkit_plugins.xlm_align import DenoisingWordAlignment, XlmAlignConfig, itermax, sinkhorn

VOCAB = VocabInfo(bos_id=0, eos_id=2, mask_id=63, pad_id=1, vocab_size=64, special_ids=(0, 1, 2, 3, 63))


def test_sinkhorn_without_exp():
    sim = torch.tensor([[2.0, -1.0], [1.0, 1.0]])
    pi = sinkhorn(sim, 1)
    s = torch.tensor([[2.0, 1e-6], [1.0, 1.0]])  # entries <= 0 become 1e-6
    xi = s / s.sum(0, keepdim=True)
    assert torch.allclose(pi, xi / xi.sum(1, keepdim=True))
    assert torch.allclose(sinkhorn(sim, 3).sum(1), torch.ones(2))
    assert torch.equal(sinkhorn(torch.tensor([[0.5, 2.0]]), 0), torch.tensor([[0.5, 2.0]]))


def test_torch_itermax_agrees_with_the_evaluation_itermax():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m, n = rng.integers(1, 10, size=2)
        sim = rng.random((m, n))
        ours = itermax(torch.tensor(sim), 2).numpy()
        assert np.array_equal(ours, itermax_links(sim, 2))


class Encoder(torch.nn.Module):
    """A stand-in encoder: embeddings + per-layer linear maps, an LM head; records modes."""

    hidden_size, num_layers = 16, 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(64, 16)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))
        self.head = torch.nn.Linear(16, 64)
        self.modes: list[tuple[bool, int | None]] = []

    def forward(self, ids, mask, up_to_layer=None, position_ids=None, token_type_ids=None):
        self.modes.append((self.training, up_to_layer))
        h = [self.emb(ids)]
        for layer in self.layers[: up_to_layer if up_to_layer is not None else 3]:
            h.append(torch.tanh(layer(h[-1])))
        return h

    def lm_logits(self, hidden):
        return self.head(hidden)


def build(**config):
    class Ctx:
        encoder = Encoder()
        vocab = VOCAB
        instance_name = "xlm_align"
        max_length = 16
        device = torch.device("cpu")

    return DenoisingWordAlignment(XlmAlignConfig(**config), Ctx()), Ctx.encoder


def examples(objective, n=6, step=0):
    out = []
    for k in range(n):
        row = objective._layout({"src_ids": [10 + k, 11, 12, 13], "tgt_ids": [30 + k, 31, 32]})
        out.append({**row, "src_lang": "en", "tgt_lang": "de", "group": "en-de",
                    SAMPLE_SEED: sample_seed(1, "xlm_align", step, k)})  # fmt: skip
    return out


def test_layout_spans_and_rank_invariant_order():
    objective, _ = build(random_order=True, mask_prob=0.3, wa_layer=2)
    ex = examples(objective, 16)
    whole = objective.collate(ex, torch.Generator().manual_seed(0))
    halves = [objective.collate(ex[:8], torch.Generator().manual_seed(1)),
              objective.collate(ex[8:], torch.Generator().manual_seed(2))]  # fmt: skip
    for key in whole:
        assert torch.equal(whole[key], torch.cat([h[key] for h in halves])), key
    spans = whole["spans"].tolist()
    assert {tuple(s) for s in spans} == {(1, 5, 6, 9), (1, 4, 5, 9)}  # both orders occur
    for ids, (s0, s1, t0, t1) in zip(whole["clean_input_ids"].tolist(), spans):
        assert ids[0] == 0 and ids[s1] == 2 and ids[t1] == 2 and t0 == s1 + 1


def test_self_labels_come_from_an_eval_pass_on_clean_input_and_cross_spans():
    objective, encoder = build(wa_layer=2)
    batch = objective.collate(examples(objective), torch.Generator().manual_seed(0))
    encoder.train(True)
    partner = objective.self_label(encoder, batch)
    assert encoder.modes[-1] == (False, 2) and encoder.training  # eval pass, restored
    for row, (s0, s1, t0, t1) in enumerate(batch["spans"].tolist()):
        linked = (partner[row] >= 0).nonzero().flatten().tolist()
        assert linked, "itermax links at least one pair"
        for p in linked:
            q = int(partner[row, p])
            assert (s0 <= p < s1 and t0 <= q < t1) or (t0 <= p < t1 and s0 <= q < s1)


def test_compute_pointer_and_tlm_losses_and_schedule():
    objective, encoder = build(wa_layer=2, mask_prob=0.5, align_enable_step=3)
    batch = objective.collate(examples(objective), torch.Generator().manual_seed(0))
    units = objective.sample_size(batch)
    early = objective.compute(batch, StepContext(step=2, encoder=encoder, device=torch.device("cpu")))
    assert "pointer_loss" not in early.metrics and early.sample_size == units
    assert early.loss.item() == pytest.approx(float(early.metrics["tlm_loss"]), rel=1e-5)
    out = objective.compute(batch, StepContext(step=3, encoder=encoder, device=torch.device("cpu")))
    assert out.sample_size == units and out.loss.requires_grad
    metrics = {k: float(v) for k, v in out.metrics.items()}  # 0-dim tensors (API 1.2) or floats
    queries = metrics["pointer_queries"] * units
    assert 0 < queries <= units
    # loss = (Σ TLM CE + Σ pointer CE) / TLM predictions
    expected = (metrics["tlm_loss"] * units + metrics["pointer_loss"] * queries) / units
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    out.loss.backward()
    assert objective.q_linear.weight.grad is not None and objective.q_linear.weight.grad.abs().sum() > 0


def test_pointer_scores_only_the_other_span():
    objective, encoder = build(wa_layer=1, mask_prob=0.9)
    batch = objective.collate(examples(objective, 2), torch.Generator().manual_seed(0))
    hidden = encoder(batch["input_ids"], batch["attention_mask"])[-1]
    partner = objective.self_label(encoder, batch)
    predicted = batch["labels"] != IGNORE_INDEX
    loss, queries, correct = objective._pointer(hidden, batch, partner, predicted)
    assert queries == int((predicted & (partner >= 0)).sum()) and 0 <= correct <= queries
    assert torch.isfinite(loss)


def test_wa_layer_deeper_than_the_encoder_is_a_user_error():
    from objkit.contract.errors import UserError

    with pytest.raises(UserError, match="wa_layer"):
        build(wa_layer=4)

"""MLM masking statistics, special-token exclusion, and the masked-only LM head."""

from __future__ import annotations

import torch
from transformers import XLMRobertaConfig

from objkit.blocks.encoder import XLMREncoder
from objkit.contract.interfaces import VocabInfo
from objkit.blocks.masking import IGNORE_INDEX, MaskingConfig, mask_tokens, masked_lm_output, pad_sequences

VOCAB = VocabInfo(bos_id=0, eos_id=2, mask_id=99, pad_id=1, vocab_size=100, special_ids=(0, 1, 2, 3, 99))


def _batch(rows: int = 400, length: int = 60) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 99, (rows, length), generator=gen)
    ids[:, 0] = VOCAB.bos_id
    ids[:, -1] = VOCAB.eos_id
    cut = length * 2 // 3
    ids[::2, cut:] = VOCAB.pad_id  # half the rows padded
    ids[::2, cut - 1] = VOCAB.eos_id
    return ids


def test_masking_rates_are_15_80_10_10():
    ids = _batch()
    masked, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(1))
    maskable = ~torch.isin(ids, torch.tensor(VOCAB.special_ids))
    selected = labels != IGNORE_INDEX
    rate = selected.sum() / maskable.sum()
    assert abs(rate.item() - 0.15) < 0.01
    as_mask = (masked == VOCAB.mask_id) & selected
    unchanged = (masked == ids) & selected
    changed = ~as_mask & ~unchanged & selected
    n = selected.sum().item()
    assert abs(as_mask.sum().item() / n - 0.8) < 0.03
    assert abs(changed.sum().item() / n - 0.1) < 0.02
    # random replacements can coincide with the original token (1/95 chance), counted as kept
    assert abs(unchanged.sum().item() / n - 0.1) < 0.02
    assert torch.equal(labels[selected], ids[selected])


def test_special_tokens_and_padding_never_selected_or_replaced():
    ids = _batch()
    masked, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(2), MaskingConfig(mask_prob=0.9))
    special = torch.isin(ids, torch.tensor(VOCAB.special_ids))
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])
    random_tokens = masked[(labels != IGNORE_INDEX) & (masked != VOCAB.mask_id)]
    assert not torch.isin(random_tokens, torch.tensor(VOCAB.special_ids)).any()


def test_every_sequence_predicts_at_least_one_token_and_masking_is_seeded():
    ids = torch.tensor([[0, 5, 2, 1, 1], [0, 6, 7, 2, 1]])
    for seed in range(20):
        _, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(seed), MaskingConfig(mask_prob=0.01))
        assert ((labels != IGNORE_INDEX).sum(dim=1) >= 1).all()
    a = mask_tokens(_batch(), VOCAB, torch.Generator().manual_seed(5))
    b = mask_tokens(_batch(), VOCAB, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_pad_sequences():
    ids, attention = pad_sequences([[0, 5, 2], [0, 2]], pad_id=1)
    assert ids.tolist() == [[0, 5, 2], [0, 2, 1]]
    assert attention.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_masked_only_head_equals_full_logits_loss():
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=70,
    )
    encoder = XLMREncoder.from_hf_config(config).eval()
    ids = _batch(rows=6, length=30)
    attention = (ids != VOCAB.pad_id).long()
    masked, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(3))
    batch = {"input_ids": masked, "attention_mask": attention, "labels": labels}
    ours = masked_lm_output(encoder, batch)
    full = encoder.mlm(input_ids=masked, attention_mask=attention, labels=labels)  # HF: full logits
    torch.testing.assert_close(ours.loss, full.loss, rtol=1e-5, atol=1e-6)
    assert ours.sample_size == int((labels != IGNORE_INDEX).sum())


def test_a_row_is_masked_the_same_in_any_batch():
    """With per-row seeds, a sequence's mask depends on its seed only, not on the batch it
    is collated in (its neighbours, the padding width, its position)."""
    rows = [[0, *range(10, 40), 2], [0, 5, 6, 2], [0, *range(50, 60), 2]]
    seeds = [11, 12, 13]
    together, _ = pad_sequences(rows, VOCAB.pad_id)
    masked, labels = mask_tokens(together, VOCAB, torch.Generator().manual_seed(0), seeds=seeds)
    for i, row in enumerate(rows):
        alone, alone_labels = mask_tokens(torch.tensor([row]), VOCAB, torch.Generator().manual_seed(9), seeds=[seeds[i]])
        assert masked[i, : len(row)].tolist() == alone[0].tolist()
        assert labels[i, : len(row)].tolist() == alone_labels[0].tolist()
    reordered, _ = mask_tokens(pad_sequences(rows[::-1], VOCAB.pad_id)[0], VOCAB, torch.Generator(), seeds=seeds[::-1])
    assert reordered[2, : len(rows[0])].tolist() == masked[0, : len(rows[0])].tolist()


def test_mask_specials_selects_bos_and_eos_but_never_padding():
    ids = _batch()
    cfg = MaskingConfig(mask_prob=0.5, mask_specials=True)
    masked, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(3), cfg)
    pad = ids == VOCAB.pad_id
    assert (labels[pad] == IGNORE_INDEX).all() and (masked[pad] == VOCAB.pad_id).all()
    ends = (ids == VOCAB.bos_id) | (ids == VOCAB.eos_id)
    selected = labels != IGNORE_INDEX
    rate = (selected & ends).sum() / ends.sum()
    assert abs(rate.item() - 0.5) < 0.06  # specials are selected at the same rate as words
    assert torch.equal(labels[selected & ends], ids[selected & ends])  # the label is the special itself
    # random replacements still never insert a special token
    random_tokens = masked[selected & (masked != VOCAB.mask_id) & (masked != ids)]
    assert not torch.isin(random_tokens, torch.tensor(VOCAB.special_ids)).any()


def test_mask_specials_off_by_default_and_same_draws_for_words():
    ids = _batch(rows=8)
    seeds = list(range(8))
    off = mask_tokens(ids, VOCAB, torch.Generator(), MaskingConfig(), seeds=seeds)
    on = mask_tokens(ids, VOCAB, torch.Generator(), MaskingConfig(mask_specials=True), seeds=seeds)
    assert MaskingConfig().mask_specials is False
    words = ~torch.isin(ids, torch.tensor(VOCAB.special_ids))
    # the per-position draws are the same; only the set of eligible positions grows: words are
    # selected alike and get the same action (<mask> or not); random picks may differ
    assert torch.equal(off[1][words], on[1][words])
    assert torch.equal((off[0] == VOCAB.mask_id)[words], (on[0] == VOCAB.mask_id)[words])
    assert ((on[1] != IGNORE_INDEX) & ~words & (ids != VOCAB.pad_id)).any()

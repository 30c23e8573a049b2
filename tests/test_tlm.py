"""TLM layout and the seeded per-example order bit (``random_order``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from objkit.contract.interfaces import VocabInfo
from objkit.blocks.masking import IGNORE_INDEX
from objkit.blocks.seeding import SAMPLE_SEED, sample_seed, sample_uniform
from objkit_plugins.tlm import TLMConfig, TranslationLM

VOCAB = VocabInfo(bos_id=0, eos_id=2, mask_id=99, pad_id=1, vocab_size=100, special_ids=(0, 1, 2, 3, 99))


def make(**config):
    tlm = TranslationLM.__new__(TranslationLM)  # no encoder needed for the layout and collate
    cfg = TLMConfig(**config)
    ctx = SimpleNamespace(vocab=VOCAB, max_length=32, encoder=None, instance_name="tlm")
    tlm.config, tlm.vocab, tlm.bos_id, tlm.eos_id = cfg, VOCAB, VOCAB.bos_id, VOCAB.eos_id
    tlm.max_length, tlm.first_position = ctx.max_length, VOCAB.pad_id + 1
    tlm.language_ids = {lang: i for i, lang in enumerate(cfg.languages)}
    return tlm


def pairs(n: int, step: int = 0) -> list[dict]:
    out = []
    for k in range(n):
        src, tgt = [10 + k, 11, 12], [50 + k, 51]
        row = make()._layout({"src_ids": src, "tgt_ids": tgt})
        out.append({**row, "src_lang": "en", "tgt_lang": "de", "group": k,
                    SAMPLE_SEED: sample_seed(1, "tlm", step, k)})  # fmt: skip
    return out


def test_default_order_is_source_first():
    tlm = make(mask_prob=0.01)
    ex = pairs(4)
    assert tlm.ordered(ex, [e[SAMPLE_SEED] for e in ex]) is ex
    assert ex[0]["input_ids"] == [0, 10, 11, 12, 2, 50, 51, 2] and ex[0]["src_len"] == 5


def test_random_order_swaps_sides_and_languages_by_the_sample_seed():
    tlm = make(random_order=True, language_embeddings=True, languages=["en", "de"])
    ex = pairs(64)
    seeds = [e[SAMPLE_SEED] for e in ex]
    out = tlm.ordered(ex, seeds)
    swapped = [sample_uniform(s, "order") >= 0.5 for s in seeds]
    assert 16 < sum(swapped) < 48  # about half
    for e, o, sw in zip(ex, out, swapped):
        k = e["group"]
        if sw:
            assert o["input_ids"] == [0, 50 + k, 51, 2, 10 + k, 11, 12, 2] and o["src_len"] == 4
            assert (o["src_lang"], o["tgt_lang"]) == ("de", "en")
        else:
            assert o == e
    batch = tlm.collate(ex, torch.Generator().manual_seed(0))
    first = [tlm.language_ids["de" if sw else "en"] for sw in swapped]
    assert batch["token_type_ids"][:, 1].tolist() == first  # language ids follow the sides
    assert (batch["labels"] != IGNORE_INDEX).any()


def test_random_order_is_rank_invariant():
    """Collating the global batch at once or in two halves (two ranks) gives the same rows."""
    tlm = make(random_order=True)
    ex = pairs(8)
    whole = tlm.collate(ex, torch.Generator().manual_seed(0))
    halves = [tlm.collate(ex[:4], torch.Generator().manual_seed(1)), tlm.collate(ex[4:], torch.Generator().manual_seed(2))]
    for key in ("input_ids", "labels", "attention_mask"):
        joined = torch.cat([h[key] for h in halves])
        assert torch.equal(whole[key], joined)

"""mixup augmentation: the reference layout for all 8 bit patterns, adjacent pairing in
prepare, random partners from another group, prob, and the objective's use of query_side."""

from __future__ import annotations

import datasets
import pytest
import torch

from objkit import BuildContext
from objkit.contract.interfaces import VocabInfo
from objkit.contract.registry import Registry
from objkit.blocks.seeding import derive_seed

VOCAB = VocabInfo(bos_id=0, eos_id=2, mask_id=49, pad_id=1, vocab_size=50, special_ids=(0, 1, 2, 3, 49))
BOS, EOS = 0, 2


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_entry_points()


def make(registry: Registry, max_length: int = 64, **keys):
    cls = registry.get("mixup", kind="augmentation").cls
    ctx = BuildContext(
        encoder=None,  # type: ignore[arg-type]
        tokenizer=None, vocab=VOCAB, registry=registry, instance_name="xlco", seed=1,
        device=torch.device("cpu"), total_steps=1, max_length=max_length,
    )
    return cls(cls.Config(**keys), ctx)


A1, B1, A2, B2 = [10, 11], [20], [30, 31, 32], [40, 41]


def reference_layout(mode: int) -> tuple[list[int], list[int]]:
    """What the reference's XlcoDataset builds (items are <s> x </s>), written out by hand:
    returns (query sequence, key sequence) with special tokens."""
    src1, tgt1, src2, tgt2 = [BOS, *A1, EOS], [BOS, *B1, EOS], [BOS, *A2, EOS], [BOS, *B2, EOS]
    if mode & 1:
        src1, src2 = src2, src1
    if mode & 2:
        tgt1, tgt2 = tgt2, tgt1
    source = src1 + src2[1:]  # the second item's <s> is removed
    target = tgt1 + tgt2[1:]
    if mode & 4:
        source, target = target, source
    return source, target  # source feeds the trained (query) encoder, target the momentum encoder


@pytest.mark.parametrize("mode", range(8))
def test_layout_matches_reference_for_every_bit_pattern(registry, mode):
    from objkit_plugins.mixup import mix_pair

    row = mix_pair((A1, B1), (A2, B2), mode, EOS)
    sides = (row["src_ids"], row["tgt_ids"])
    query_ids, key_ids = sides if row["query_side"] == 0 else sides[::-1]
    assert ([BOS, *query_ids, EOS], [BOS, *key_ids, EOS]) == reference_layout(mode)


def test_xlco_collate_uses_mixup_query_side(registry):
    from transformers import XLMRobertaConfig

    from objkit.blocks.encoder import XLMREncoder

    cfg = XLMRobertaConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=40, pad_token_id=1, type_vocab_size=1,
    )
    xlco = registry.get("xlco", kind="objective").cls
    config = xlco.Config(layer=1, mask_inputs=False, negatives={"in_batch": {}}, augment={"mixup": {}},
                         length_groups=1)  # rows in batch order
    ctx = BuildContext(
        encoder=XLMREncoder.from_hf_config(cfg), tokenizer=None, vocab=VOCAB, registry=registry, instance_name="xlco",
        seed=1, device=torch.device("cpu"), total_steps=1, max_length=32,
    )
    objective = xlco(config, ctx)
    examples = [
        {"src_ids": A1, "tgt_ids": B1, "partner_src_ids": A2, "partner_tgt_ids": B2, "group": "g", "sample_seed": i}
        for i in range(8)
    ]
    batch = objective.collate(examples, torch.Generator().manual_seed(11))
    modes = [derive_seed(i, "mixup/mode") % 8 for i in range(8)]  # the bits belong to the sample
    assert len(set(m >> 2 for m in modes)) == 2  # both query sides occur
    for i, mode in enumerate(modes):
        query, key = reference_layout(mode)
        assert batch["input_ids"][i, : len(query)].tolist() == query
        assert batch["key_input_ids"][i, : len(key)].tolist() == key


def test_adjacent_prepare_pairs_consecutive_rows_of_a_group(registry):
    rows = {
        "src_ids": [[1 + i] for i in range(5)],
        "tgt_ids": [[20 + i] for i in range(5)],
        "src_lang": ["en"] * 5,
        "tgt_lang": ["de", "de", "de", "fr", "fr"],
        "group": ["en-de", "en-de", "en-de", "en-fr", "en-fr"],
    }
    prepared = make(registry).prepare(datasets.Dataset.from_dict(rows))
    assert prepared["src_ids"] == [[1], [3], [4]]
    assert prepared["partner_src_ids"] == [[2], [], [5]]  # row 3 (en-de) has no same-group neighbour
    assert prepared["partner_tgt_ids"] == [[21], [], [24]]
    assert prepared["group"] == ["en-de", "en-de", "en-fr"]
    assert make(registry, partner="random").prepare(datasets.Dataset.from_dict(rows)).num_rows == 5


def test_apply_adjacent_mixes_with_seeded_modes(registry):
    aug = make(registry)
    examples = [
        {"src_ids": A1, "tgt_ids": B1, "partner_src_ids": A2, "partner_tgt_ids": B2, "group": "g", "sample_seed": 7},
        {"src_ids": A1, "tgt_ids": B1, "partner_src_ids": [], "partner_tgt_ids": [], "group": "g", "sample_seed": 8},
    ]
    out = aug.apply(examples, torch.Generator().manual_seed(5))
    mode = derive_seed(7, "mixup/mode") % 8
    from objkit_plugins.mixup import mix_pair

    assert {k: out[0][k] for k in ("src_ids", "tgt_ids", "query_side")} == mix_pair((A1, B1), (A2, B2), mode, EOS)
    assert out[1] == {"src_ids": A1, "tgt_ids": B1, "group": "g", "sample_seed": 8}  # no partner: unchanged
    # the same sample is mixed the same way in any batch, with any generator
    alone = aug.apply(examples[:1], torch.Generator().manual_seed(99))
    assert alone[0] == out[0]
    assert all("partner_src_ids" not in row for row in out)
    none = make(registry, prob=0.0).apply(examples, torch.Generator().manual_seed(5))
    assert all("query_side" not in row for row in none)


def test_random_partner_prefers_another_group(registry):
    aug = make(registry, partner="random")
    examples = [{"src_ids": [10 + i], "tgt_ids": [20 + i], "group": "en-de" if i < 3 else "en-fr"} for i in range(4)]
    for seed in range(20):
        out = aug.apply(examples, torch.Generator().manual_seed(seed))
        for i, row in enumerate(out):
            partner_src = [t for t in row["src_ids"] if t not in (10 + i, EOS)]
            assert len(partner_src) == 1
            j = partner_src[0] - 10
            assert examples[j]["group"] != examples[i]["group"]
    single = [{"src_ids": [10 + i], "tgt_ids": [20 + i], "group": "g"} for i in range(3)]
    out = aug.apply(single, torch.Generator().manual_seed(0))
    assert all(len(row["src_ids"]) == 3 and row["src_ids"].count(EOS) == 1 for row in out)


def test_mixed_sides_fit_max_length(registry):
    from objkit_plugins.mixup import mix_pair

    row = mix_pair((list(range(4, 30)), [5]), (list(range(4, 10)), [6]), 0, EOS, budget=13)
    assert len(row["src_ids"]) == 13 + 1  # 13 content tokens + the middle </s>
    assert row["src_ids"][-6:] == list(range(4, 10))  # the longer sentence was trimmed

"""ERNIE-M's camlm and btmlm: the cross-attention mask (a masked token cannot see its own
sentence), BTMLM's gradient-free first pass, the conformance kit, and the quickstart recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, XLMRobertaConfig

from objkit.bert import BertEncoder
from objkit.blocks.encoder import XLMREncoder
from objkit.contract.interfaces import StepContext, VocabInfo
from objkit.blocks.masking import IGNORE_INDEX
from objkit.blocks.seeding import SAMPLE_SEED
from objkit.testing import ObjectiveConformance
from objkit_plugins.ernie_m import (
    BackTranslationMLM,
    BTMLMConfig,
    CAMLMConfig,
    CrossAttentionMLM,
    cross_attention_mask,
)

ROOT = Path(__file__).parent.parent
VOCAB = VocabInfo(bos_id=0, eos_id=2, mask_id=4, pad_id=1, vocab_size=40, special_ids=(0, 1, 2, 3, 4))


class Ctx:
    """The part of BuildContext these objectives read."""

    instance_name = "x"
    vocab = VOCAB
    max_length = 32


def xlmr(attn: str = "sdpa") -> XLMREncoder:
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=40, pad_token_id=1,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = XLMREncoder.from_hf_config(config)
    encoder.body().config._attn_implementation = attn
    return encoder.eval()


def bert() -> BertEncoder:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertEncoder.from_hf_config(config).eval()


# <s> 5 6 7 </s> | 8 9 10 11 </s> <pad>: source side = positions 0..4, target side = 5..9
IDS = torch.tensor([[0, 5, 6, 7, 2, 8, 9, 10, 11, 2, 1]])
PAD = (IDS != 1).long()
SIDES = (torch.arange(IDS.shape[1]) >= 5).long()[None]


def hidden(encoder, ids, context: int, layer: int | None = None) -> torch.Tensor:
    mask = cross_attention_mask(PAD, SIDES, torch.tensor([context]))
    with torch.no_grad():
        return encoder(ids, mask, up_to_layer=layer)[-1]


def with_token(position: int, token: int) -> torch.Tensor:
    ids = IDS.clone()
    ids[0, position] = token
    return ids


def test_mask_pattern():
    paper = cross_attention_mask(PAD, SIDES, torch.tensor([-1]))[0]
    assert paper[1, 5:10].all() and not paper[1, :5].any() and not paper[1, 10]  # source reads target only
    assert paper[6, :5].all() and not paper[6, 5:].any()  # target reads source only, never padding
    assert paper[10, :10].all()  # a padding row reads every real key (no empty softmax row)
    strict = cross_attention_mask(PAD, SIDES, torch.tensor([1]))[0]  # context = the target
    assert strict[:10, 5:10].all() and not strict[:10, :5].any()


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("make", [xlmr, lambda: xlmr("eager"), bert], ids=["xlmr-sdpa", "xlmr-eager", "bert"])
def test_a_masked_source_token_cannot_see_its_own_sentence(make):
    encoder = make()
    ids = with_token(2, VOCAB.mask_id)  # the masked source token at position 2
    other_source = ids.clone()
    other_source[0, [1, 3]] = torch.tensor([20, 21])  # the rest of its own sentence changes
    other_target = ids.clone()
    other_target[0, 7] = 22
    first = hidden(encoder, ids, -1, layer=1)[0, 2]  # the paper's mask, after the first block
    assert gap(hidden(encoder, other_source, -1, layer=1)[0, 2], first) < 1e-6
    assert gap(hidden(encoder, other_target, -1, layer=1)[0, 2], first) > 1e-3
    # the paper's mask, all blocks: from the second on, the target carries the source back (two hops)
    assert gap(hidden(encoder, other_source, -1)[0, 2], hidden(encoder, ids, -1)[0, 2]) > 1e-5
    # strict: no block ever reads the predicted side, at any depth
    full = hidden(encoder, ids, 1)[0, 2]
    assert gap(hidden(encoder, other_source, 1)[0, 2], full) < 1e-6
    assert gap(hidden(encoder, other_target, 1)[0, 2], full) > 1e-3


def test_a_full_pairwise_mask_equals_the_padding_mask():
    encoder = xlmr()
    pairwise = (PAD[:, :, None] * PAD[:, None, :]).bool()
    pairwise[0, 10] = True  # the padding row: anything
    with torch.no_grad():
        a = encoder(IDS, PAD)[-1][0, :10]
        b = encoder(IDS, pairwise)[-1][0, :10]
    assert torch.allclose(a, b, atol=1e-5)
    cross = cross_attention_mask(PAD, SIDES, torch.tensor([-1]))
    copy = encoder.momentum_copy()  # a momentum copy honours the pairwise mask as forward does
    with torch.no_grad():
        assert torch.allclose(copy(IDS, cross)[-1], encoder(IDS, cross)[-1], atol=1e-5)


def examples(rows):
    return [dict(row, **{SAMPLE_SEED: 1000 + i}) for i, row in enumerate(rows)]


def test_camlm_strict_masks_one_side_only():
    objective = CrossAttentionMLM(CAMLMConfig(strict=True, mask_prob=0.9), Ctx())
    pairs = [objective._layout({"src_ids": [5, 6, 7, 8, 9], "tgt_ids": [10, 11, 12, 13]}) for _ in range(8)]
    batch = objective.collate(examples(pairs), torch.Generator().manual_seed(0))
    predicted = 1 - batch["cam_context"]
    labelled = batch["labels"] != IGNORE_INDEX
    assert labelled.any() and set(predicted.tolist()) == {0, 1}
    assert not (labelled & (batch["side_ids"] != predicted[:, None])).any()


def test_btmlm_first_pass_has_no_gradient():
    encoder = xlmr().train()
    objective = BackTranslationMLM(BTMLMConfig(mask_prob=0.5), Ctx())
    sentences = ([5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16])
    rows = [objective._layout({"input_ids": sentence}) for sentence in sentences]
    assert rows[0]["input_ids"] == [0, 5, 6, 7, 8, 2, 4, 4, 4, 4, 2]  # k = the sentence's length
    batch = objective.collate(examples(rows), torch.Generator().manual_seed(0))
    assert not (batch["labels"][batch["side_ids"] == 1] != IGNORE_INDEX).any()  # placeholders never predicted
    passes: list[bool] = []
    hook = encoder.body().register_forward_hook(lambda *_: passes.append(torch.is_grad_enabled()))
    filled = objective.pseudo_translation(encoder, batch)
    assert filled.grad_fn is None and not filled.requires_grad
    slots = batch["placeholders"]
    assert not torch.isin(filled[slots], torch.tensor(VOCAB.special_ids)).any()  # real tokens only
    assert torch.equal(filled[~slots], batch["input_ids"][~slots])
    out = objective.compute(batch, StepContext(step=0, encoder=encoder, device=torch.device("cpu")))
    hook.remove()
    assert passes == [False, False, True]  # this test's pass 1, then compute's: pass 1 without, pass 2 with
    out.loss.backward()
    assert encoder.body().embeddings.word_embeddings.weight.grad is not None
    assert out.sample_size == objective.sample_size(batch) > 0


class TestCAMLM(ObjectiveConformance):
    plugin = "camlm"
    distribution = "objkit"
    configs = [{}, {"strict": True, "mask_specials": True}]
    bad_configs = [{"strict": "sometimes"}, {"mask_prob": 0.0}]


class TestBTMLM(ObjectiveConformance):
    plugin = "btmlm"
    distribution = "objkit"
    configs = [{}, {"second_pass": "mlm", "placeholder_ratio": 0.5}]
    bad_configs = [{"second_pass": "tlm"}, {"placeholder_ratio": 0.0}]


def test_quickstart_runs_in_process(tmp_path, capsys):
    from objkit.cli import main

    recipe = str(ROOT / "recipes/quickstart_ernie_m.toml")
    small = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=4",
             "model.intermediate_size=64", "model.max_length=32", "model.tokenizer={vocab_size=600}",
             'data.mono.locales=["en","de"]', 'data.parallel.locales=["en","de"]', "train.steps=3",
             "train.batch_size=8", "train.checkpoint_every=3", "train.log_every=1"]
    argv = ["run", recipe, "-o", str(tmp_path / "run"), "--no-progress"]
    for item in small:
        argv += ["--set", item]
    with pytest.raises(SystemExit) as done:
        main(argv)
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert (done.value.code or 0) == 0, err
    assert "done: 3 steps" in err
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"camlm/loss"' in logged and '"btmlm/loss"' in logged

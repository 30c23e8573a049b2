"""Evaluators and the conformance kit work on any encoder through the Encoder contract, not only
XLM-R: the ``hf_mlm`` encoder on a tiny DistilBERT and a tiny ELECTRA (transformers configs, random
weights, a WordPiece tokenizer built in tmp_path; nothing downloaded) passes the retrieval
evaluator -- on the encoder itself and on its export, where only the blocks up to the layer run --
and the objective conformance kit (objkit.testing.ObjectiveConformance with a TinyEncoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from objkit.testing import ObjectiveConformance, TinyEncoder

COMMON = {"encoder": "hf_mlm", "tokenizer": "unused", "max_length": 32, "dropout": 0.0}
DIMS = {"num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
FAMILIES = {
    "distilbert": {**COMMON, "family": "distilbert", "hf_config": {"n_layers": 3, "dim": 32, "n_heads": 4,
                                                                     "hidden_dim": 64}},
    "electra": {**COMMON, "family": "electra", "hf_config": {**DIMS, "embedding_size": 16}},
}
DISTILBERT = TinyEncoder("hf_mlm", FAMILIES["distilbert"])
ELECTRA = TinyEncoder("hf_mlm", FAMILIES["electra"])

WORDS = "the a cat dog sat on mat big small red house tree ran blue green old new".split()
SENTENCES = ["the cat sat on the mat", "a big dog ran", "small red house", "the old tree", "a blue cat sat",
             "green mat on a tree", "the new house", "big small dog", "red tree on the house", "a cat ran"]


# ----------------------------------------------------------------------------- the objective kit
class TestMLMOnDistilBERT(ObjectiveConformance):
    plugin = "mlm"
    distribution = "objkit"
    encoder = DISTILBERT
    configs = [{}]


class TestXLCOOnDistilBERT(ObjectiveConformance):
    """Momentum copy of the first two blocks and truncated passes, through the contract."""

    plugin = "xlco"
    distribution = "objkit"
    encoder = DISTILBERT
    configs = [{"layer": 2, "pooling": "mean", "negatives": {"in_batch": {}}}]


class TestMLMOnELECTRA(ObjectiveConformance):
    plugin = "mlm"
    distribution = "objkit"
    encoder = ELECTRA
    configs = [{}]


def test_the_kit_trains_the_encoder_it_is_given():
    """The checks build the TinyEncoder's plugin, not XLM-R: a DistilBERT body, three blocks."""
    from objkit.testing import tiny_encoder

    encoder = DISTILBERT.build(seed=0)
    assert type(encoder.body()).__name__ == "DistilBertModel" and encoder.num_layers == 3
    assert type(tiny_encoder().body()).__name__ == "XLMRobertaModel"  # the default is unchanged
    again = DISTILBERT.build(seed=0)
    for a, b in zip(encoder.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # weights from the seed


# ----------------------------------------------------------------------------- the retrieval evaluator
def _wordpiece_tokenizer(path: Path):
    """A BERT-layout WordPiece tokenizer over WORDS, saved in ``path`` and loaded back."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def _reference(model, tokenizer, sentences: list[str], layer: int) -> torch.Tensor:
    """Mean-pooled, L2-normalised ``hidden_states[layer]`` of a full pass of a transformers model."""
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       output_hidden_states=True).hidden_states
    weight = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((states[layer] * weight).sum(1) / weight.sum(1), dim=-1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_retrieval_on_hf_mlm_and_its_export(family, tmp_path, capsys):
    """``encode_sentences`` / ``evaluate_pair`` on the hf_mlm encoder (its truncated forward) and on
    the exported ``AutoModel`` (only the blocks up to the layer run, found by
    ``objkit.find_block_list``) give the full pass's layer-2 vectors; each sentence retrieves
    itself; ``objkit eval retrieval`` on the export says so too."""
    from transformers import AutoModel

    from objkit.cli import main
    from objkit.eval.retrieval import encode_sentences, evaluate_pair

    tokenizer = _wordpiece_tokenizer(tmp_path / "tokenizer")
    spec = TinyEncoder("hf_mlm", FAMILIES[family], vocab_size=len(tokenizer))
    encoder = spec.build(seed=0).eval()
    export = tmp_path / "export"
    encoder.save_pretrained(str(export))
    tokenizer.save_pretrained(str(export))
    model = AutoModel.from_pretrained(str(export)).eval()
    want = _reference(model, tokenizer, SENTENCES, layer=2)

    ours = encode_sentences(encoder, tokenizer, SENTENCES, layer=2, batch_size=4)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-5)

    blocks = model.get_submodule("transformer.layer" if family == "distilbert" else "encoder.layer")
    ran: list[int] = []
    hooks = [block.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, block in enumerate(blocks)]
    exported = encode_sentences(model, tokenizer, SENTENCES, layer=2, batch_size=len(SENTENCES))
    for hook in hooks:
        hook.remove()
    assert ran == [0, 1], f"blocks run on the export for layer 2: {ran}"  # not the third
    assert len(model.get_submodule("transformer.layer" if family == "distilbert" else "encoder.layer")) == 3
    torch.testing.assert_close(exported, want, rtol=1e-4, atol=1e-5)

    scores = evaluate_pair(encoder, tokenizer, SENTENCES, SENTENCES, layer=2)
    assert scores["src2tgt"] == scores["tgt2src"] == 100.0 and scores["n"] == len(SENTENCES)

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    main(["eval", "retrieval", str(export), "--src", str(lines), "--tgt", str(lines), "--layer", "2",
          "--device", "cpu", "--json"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["mean"] == 100.0 and row["layer"] == 2 and row["n"] == len(SENTENCES)


def test_find_block_list_finds_each_familys_blocks_and_refuses_shared_ones():
    from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel, DistilBertConfig, DistilBertModel

    from objkit import find_block_list, truncated_blocks

    bert = BertModel(BertConfig(vocab_size=40, **DIMS))
    distil = DistilBertModel(DistilBertConfig(vocab_size=40, n_layers=3, dim=32, n_heads=4, hidden_dim=64))
    assert find_block_list(bert) == "encoder.layer" and find_block_list(distil) == "transformer.layer"
    with truncated_blocks(distil, 1, "transformer.layer") as full:
        assert len(distil.transformer.layer) == 1 and len(full) == 3
    assert len(distil.transformer.layer) == 3
    with pytest.raises(ValueError, match=r"num_hidden_layers = 3 distinct transformer blocks .*found none$"):
        find_block_list(AlbertModel(AlbertConfig(vocab_size=40, embedding_size=16, **DIMS)))
    with pytest.raises(ValueError, match=r"up_to_layer must be in \[0, 3\] \(got 4\)"):
        with truncated_blocks(bert, 4):
            pass

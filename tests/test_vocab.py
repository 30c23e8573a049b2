"""``objkit tokenizer extend``: pieces appended, every existing id unchanged, fewer tokens per
word on the new language, an HF tokenizer AutoTokenizer loads."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from objkit.cli import main
from objkit.data.tokenizer import train_tokenizer

ENGLISH = ["the house is red and the cat sleeps", "good morning to all of you", "we like green tea in the garden"]
CZECH = ["dům je červený a kočka spí", "dobré ráno všem", "rádi pijeme zelený čaj v zahradě",
         "muž v modrém tričku hraje na kytaru", "děti si hrají na ulici před školou"]


def test_extend_appends_pieces_and_keeps_every_id(capsys, tmp_path):
    train_tokenizer(ENGLISH * 40, tmp_path / "base", vocab_size=60)
    corpus = tmp_path / "cs.txt"
    corpus.write_text("\n".join(CZECH * 40) + "\n", encoding="utf-8")
    main(["tokenizer", "extend", str(tmp_path / "base"), str(corpus), "-o", str(tmp_path / "ext"), "--add", "20",
          "--lang", "cs"])
    assert "appended 20 pieces" in capsys.readouterr().out
    base, ext = AutoTokenizer.from_pretrained(tmp_path / "base"), AutoTokenizer.from_pretrained(tmp_path / "ext")
    assert len(ext) == len(base) + 20
    kept = [i for i in range(len(base)) if i != base.mask_token_id]
    assert base.convert_ids_to_tokens(kept) == ext.convert_ids_to_tokens(kept)  # every existing id unchanged
    assert ext.mask_token_id == len(ext) - 1  # <mask> moves to the end (XLM-R layout)
    words = sum(len(s.split()) for s in CZECH)
    before = sum(len(base(s, add_special_tokens=False)["input_ids"]) for s in CZECH) / words
    after = sum(len(ext(s, add_special_tokens=False)["input_ids"]) for s in CZECH) / words
    assert after < 0.95 * before
    assert ext.decode(ext(CZECH[1], add_special_tokens=False)["input_ids"]) == CZECH[1]


def test_extend_refuses_a_base_without_a_sentencepiece_model(capsys, tmp_path):
    (tmp_path / "notok").mkdir()
    (tmp_path / "t.txt").write_text("text\n")
    with pytest.raises(SystemExit) as info:
        main(["tokenizer", "extend", str(tmp_path / "notok"), str(tmp_path / "t.txt"), "-o", str(tmp_path / "o"),
              "--add", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "has no sentencepiece.bpe.model" in err[0]


# ----------------------------------------------------------------------------- resizing a checkpoint
def _tiny_checkpoint(tokenizer, out):
    """A random 2-layer XLM-R masked LM with ``tokenizer``'s vocabulary, saved with it to ``out``."""
    import torch

    from objkit.data.tokenizer import save_tokenizer_for
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=40, pad_token_id=1, type_vocab_size=1)
    model = XLMRobertaForMaskedLM(config)
    with torch.no_grad():
        model.lm_head.bias.normal_()  # distinct biases, so the bias rows' means are checked
    model.save_pretrained(out)
    save_tokenizer_for(model, tokenizer, out)  # as objkit's export writes it
    return model


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """(base checkpoint dir, its model, extended tokenizer dir, Czech text file)."""
    root = tmp_path_factory.mktemp("vocab")
    base = train_tokenizer(ENGLISH * 40, root / "base-tok", vocab_size=60)
    model = _tiny_checkpoint(base, root / "ckpt")
    corpus = root / "cs.txt"
    corpus.write_text("\n".join(CZECH * 40) + "\n", encoding="utf-8")
    main(["tokenizer", "extend", str(root / "ckpt"), str(corpus), "-o", str(root / "ext"), "--add", "20", "--lang", "cs"])
    return root / "ckpt", model, root / "ext", corpus


def _recipe(tmp_path, init, tokenizer, corpus, steps=3):
    path = tmp_path / "cs.toml"
    path.write_text(f"""
[model]
init = "{init}"
tokenizer = "{tokenizer}"
max_length = 32
[data.cs]
type = "text"
files = [{{ path = "{corpus}", lang = "cs" }}]
[objectives.mlm]
data = "cs"
[train]
steps = {steps}
batch_size = 4
lr = 1e-3
warmup_steps = 0
seed = 0
log_every = 1
checkpoint_every = {steps}
""")
    return path


def test_init_with_an_extended_tokenizer_grows_the_rows_from_the_base_pieces(extended, tmp_path):
    import torch

    from objkit.recipe.loader import load_recipe
    from objkit.contract.registry import default_registry
    from objkit.train.trainer import Trainer

    ckpt, base_model, ext_dir, corpus = extended
    base, ext = AutoTokenizer.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ext_dir)
    trainer = Trainer(load_recipe(_recipe(tmp_path, ckpt, ext_dir, corpus), []), tmp_path / "run", default_registry(),
                      progress=False)
    mlm = trainer.encoder.mlm
    old_rows = base_model.roberta.embeddings.word_embeddings.weight
    old_bias = base_model.lm_head.bias
    rows, bias = mlm.roberta.embeddings.word_embeddings.weight, mlm.lm_head.bias
    assert rows.shape[0] == len(ext) == trainer.encoder.vocab_size == mlm.config.vocab_size
    assert mlm.lm_head.decoder.weight is rows  # still tied
    assert any(p is rows for group in trainer.optimizer.param_groups for p in group["params"])  # before the optimizer
    kept = [i for i in range(len(base)) if i != base.mask_token_id]
    assert torch.equal(rows[kept], old_rows[kept]) and torch.equal(bias[kept], old_bias[kept])  # existing rows unchanged
    assert torch.equal(rows[ext.mask_token_id], old_rows[base.mask_token_id])  # <mask> moved with its row
    assert torch.equal(bias[ext.mask_token_id], old_bias[base.mask_token_id])
    split, unknown = 0, 0
    for new_id in range(len(base) - 1, len(ext) - 1):  # the appended pieces (the old <mask> id is one of them)
        piece = ext.convert_ids_to_tokens(new_id)
        if piece.startswith("\u2581"):  # a word-start piece: the base's split of the word
            ids = [i for i in base(piece[1:], add_special_tokens=False)["input_ids"] if i != base.unk_token_id]
            split += 1
        elif set(base.tokenize(piece)) <= {"\u2581", piece} and piece not in base.get_vocab():
            ids, unknown = list(range(len(base))), unknown + 1  # a character the base lacks: the mean of all rows
        else:
            continue
        torch.testing.assert_close(rows[new_id], old_rows[ids].mean(dim=0))
        torch.testing.assert_close(bias[new_id], old_bias[ids].mean())
    assert split >= 3 and unknown >= 3


def test_continued_training_with_an_extended_tokenizer_exports_the_new_vocabulary(extended, capsys, tmp_path):
    import json
    import math

    from transformers import AutoModelForMaskedLM

    ckpt, _, ext_dir, corpus = extended
    main(["run", str(_recipe(tmp_path, ckpt, ext_dir, corpus)), "-o", str(tmp_path / "run"), "--no-progress"])
    losses = [json.loads(line)["mlm/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "export")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "export")
    assert len(tokenizer) == model.config.vocab_size == len(AutoTokenizer.from_pretrained(ext_dir))
    assert tokenizer.convert_ids_to_tokens(tokenizer(CZECH[0])["input_ids"]) == \
        AutoTokenizer.from_pretrained(ext_dir).convert_ids_to_tokens(tokenizer(CZECH[0])["input_ids"])
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)


def test_a_smaller_or_unrelated_tokenizer_is_one_line(extended, capsys, tmp_path):
    ckpt, base_model, ext_dir, corpus = extended
    ext_model = _tiny_checkpoint(AutoTokenizer.from_pretrained(ext_dir), tmp_path / "ext-ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # the base tokenizer on the extended checkpoint
        main(["run", str(_recipe(tmp_path, tmp_path / "ext-ckpt", ckpt, corpus)), "-o", str(tmp_path / "a"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert err[0].startswith("model.tokenizer:") and f"has {ext_model.config.vocab_size} embedding rows" in err[0]
    train_tokenizer(CZECH * 40, tmp_path / "other", vocab_size=90)  # larger, but not an extension of the base
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["run", str(_recipe(tmp_path, ckpt, tmp_path / "other", corpus)), "-o", str(tmp_path / "b"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "does not extend the checkpoint's tokenizer" in err[0]
    assert not list((tmp_path / "b").glob("checkpoint*"))


def test_both_encoders_resize_their_vocabulary_through_the_interface(tmp_path):
    """``Encoder.resize_vocab``: XLM-R with untied and BERT with tied weights; kept rows, means,
    the mean of all rows for none, biases, and an export AutoModelForMaskedLM loads."""
    import torch
    from transformers import AutoModelForMaskedLM, BertConfig, XLMRobertaConfig

    from objkit.bert import BertEncoder
    from objkit.blocks.encoder import XLMREncoder

    dims = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    for cls, config in [(XLMREncoder, XLMRobertaConfig(**dims, tie_word_embeddings=False)), (BertEncoder, BertConfig(**dims))]:
        torch.manual_seed(0)
        encoder = cls.from_hf_config(config)
        inputs, outputs = encoder.mlm.get_input_embeddings(), encoder.mlm.get_output_embeddings()
        with torch.no_grad():
            outputs.bias.normal_()
        old_in, old_out, old_bias = inputs.weight.clone(), outputs.weight.clone(), outputs.bias.clone()
        sources = [[i] for i in range(9)] + [[2, 5], [], [9]]  # id 9 moves to 11
        encoder.resize_vocab(sources)
        inputs, outputs = encoder.mlm.get_input_embeddings(), encoder.mlm.get_output_embeddings()
        assert encoder.vocab_size == 12 and inputs.weight.shape == (12, 8) and outputs.bias.shape == (12,)
        assert (outputs.weight is inputs.weight) == (cls is BertEncoder)
        for new, old in ((inputs.weight, old_in), (outputs.weight, old_out), (outputs.bias, old_bias)):
            assert torch.equal(new[:9], old[:9]) and torch.equal(new[11], old[9])
            torch.testing.assert_close(new[9], old[[2, 5]].mean(dim=0))
            torch.testing.assert_close(new[10], old.mean(dim=0))
        encoder.save_pretrained(tmp_path / cls.name)
        reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / cls.name)
        assert torch.equal(reloaded.get_output_embeddings().bias, outputs.bias)
        assert torch.equal(reloaded.get_output_embeddings().weight, outputs.weight)

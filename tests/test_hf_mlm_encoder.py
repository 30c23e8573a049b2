"""The ``hf_mlm`` encoder (plugins/hf_mlm.py): any transformers masked LM through the Encoder
contract, found through transformers' public API. Four tiny families built locally pass the
encoder conformance harness; on the built-in encoders' own checkpoints it computes what they
compute; a family that does not fit is refused in one line (exit 2 from the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from objkit.contract.errors import UserError
from objkit.testing import EncoderConformance

COMMON = {"encoder": "hf_mlm", "tokenizer": "unused", "max_length": 32, "dropout": 0.0}
BERT_DIMS = {"num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
FAMILIES = {
    "bert": {**COMMON, "family": "bert", "hf_config": BERT_DIMS},
    "xlm-roberta": {**COMMON, "family": "xlm-roberta", "hf_config": {**BERT_DIMS, "pad_token_id": 1}},
    "distilbert": {**COMMON, "family": "distilbert",
                   "hf_config": {"n_layers": 3, "dim": 32, "n_heads": 4, "hidden_dim": 64}},
    "electra": {**COMMON, "family": "electra", "hf_config": {**BERT_DIMS, "embedding_size": 16}},
}


class TestHFMaskedLMEncoder(EncoderConformance):
    plugin = "hf_mlm"
    distribution = "objkit"
    configs = list(FAMILIES.values())
    bad_configs = [
        {"encoder": "hf_mlm", "tokenizer": "unused"},  # neither init nor family
        {**COMMON, "family": "no-such-family"},
        {**FAMILIES["bert"], "dropout": 1.5},
    ]


def _hf_mlm() -> type:
    from objkit_plugins.hf_mlm import HFMaskedLMEncoder

    return HFMaskedLMEncoder


@pytest.mark.parametrize("builtin", ["xlmr", "bert"])
def test_hf_mlm_on_a_builtin_encoders_checkpoint_computes_what_it_computes(builtin, tmp_path):
    """Loaded from an export of the ``xlmr`` / ``bert`` encoder (``model.init`` = a directory),
    ``hf_mlm`` finds the same position layout (XLM-R from pad + 1, BERT from 0), the same
    maximum length, and gives the same hidden states at every truncation depth and the same LM
    logits at selected positions."""
    from objkit.contract.registry import Registry
    from objkit.testing.encoders import build_encoder, encoder_batch

    table = {"num_layers": 3, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "tokenizer": "unused",
             "max_length": 32, "dropout": 0.0}
    reference = build_encoder(Registry.from_entry_points().get(builtin, kind="encoder").cls, table)
    reference.save_pretrained(tmp_path)
    ours = build_encoder(_hf_mlm(), {**COMMON, "init": str(tmp_path)})
    assert (ours.first_position_id, ours.pad_position_id) == (reference.first_position_id, reference.pad_position_id)
    assert ours.max_tokens == reference.max_tokens and ours.num_layers == 3 and ours.vocab_size == 96
    ids, mask = encoder_batch(ours)
    positions = torch.arange(ids.shape[1]).expand_as(ids) + ours.first_position_id
    with torch.no_grad():
        for depth in (0, 2, 3):
            for a, b in zip(ours(ids, mask, up_to_layer=depth), reference(ids, mask, up_to_layer=depth), strict=True):
                torch.testing.assert_close(a, b)
        explicit = ours(ids[:1], mask[:1], position_ids=positions[:1])[-1]  # row 0 has no padding
        torch.testing.assert_close(explicit, ours(ids[:1], mask[:1])[-1])
        hidden = reference(ids, mask)[-1][mask.bool()]
        torch.testing.assert_close(ours.lm_logits(hidden), reference.lm_logits(hidden))


def test_objectives_train_a_distilbert_through_hf_mlm():
    """MLM, TLM (position resets; DistilBERT has no token types, so no language embeddings) and
    XLCO (momentum copy of the first blocks) put finite gradients on a DistilBERT; asking it for
    language embeddings is a one-line UserError."""
    from objkit.contract.interfaces import StepContext, VocabInfo
    from objkit.testing import build_context, dummy_source, installed_registry
    from objkit.testing.encoders import build_encoder

    registry = installed_registry()
    vocab = VocabInfo(bos_id=2, eos_id=3, mask_id=4, pad_id=0, vocab_size=96, special_ids=(0, 1, 2, 3, 4))
    tables = {
        "mlm": {},
        "tlm": {"reset_positions": True, "language_embeddings": False},
        "xlco": {"layer": 2, "pooling": "mean", "normalize": True, "temperature": 0.05, "projection": False,
                 "mask_inputs": False, "momentum": 0.99, "negatives": {"in_batch": {}}},
    }
    for plugin, table in tables.items():
        encoder = build_encoder(_hf_mlm(), FAMILIES["distilbert"]).train()
        cls = registry.get(plugin, kind="objective").cls
        objective = cls(cls.Config.model_validate(table), build_context(encoder, registry=registry, vocab=vocab))
        rows = objective.prepare(dummy_source(cls.data_kind, vocab))
        batch = objective.collate([rows[i] for i in range(8)], torch.Generator().manual_seed(0))
        out = objective.compute(batch, StepContext(step=0, encoder=encoder, device=torch.device("cpu")))
        out.loss.backward()
        grads = [p.grad for p in encoder.parameters() if p.grad is not None]
        assert torch.isfinite(out.loss) and grads and all(torch.isfinite(g).all() for g in grads), plugin
    with pytest.raises(UserError, match=r"^model.encoder: hf_mlm: DistilBertModel has no token-type table"):
        build_encoder(_hf_mlm(), FAMILIES["distilbert"]).resize_token_types(4)


def test_a_family_without_a_block_list_is_refused_in_one_line(tmp_path, capsys):
    """ALBERT shares one block across its layers: nothing to truncate or copy block by block.
    ``objkit run`` says so in one line, exit 2, and writes nothing."""
    from objkit.cli import main

    with pytest.raises(UserError, match=r"^model.encoder: hf_mlm cannot truncate AlbertModel: .*found none$"):
        _hf_mlm().build(_hf_mlm().Config.model_validate({**COMMON, "family": "albert", "hf_config": BERT_DIMS}))
    recipe = tmp_path / "albert.toml"
    recipe.write_text(
        'name = "albert"\n\n[model]\nencoder = "hf_mlm"\nfamily = "albert"\nmax_length = 32\n'
        "hf_config = { num_hidden_layers = 2, hidden_size = 32, num_attention_heads = 4, intermediate_size = 64 }\n"
        f'tokenizer = "{_word_level_tokenizer(tmp_path / "tok")}"\n\n'
        '[data.mono]\ntype = "cldr"\nkind = "text"\n\n[objectives.mlm]\ndata = "mono"\n\n'
        "[train]\nsteps = 2\nbatch_size = 4\nlr = 1e-3\n")
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "-o", str(tmp_path / "run"), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert "hf_mlm cannot truncate AlbertModel" in err[0]
    assert not (tmp_path / "run").exists()


def _word_level_tokenizer(path: Path) -> Path:
    from tiny_models import tiny_encoder

    tiny_encoder(layers=1)[1].save_pretrained(str(path))
    return path


def test_activation_checkpointing_recomputes_the_same_gradients():
    """``train.activation_checkpointing`` through transformers' own gradient checkpointing: the
    blocks checkpoint while it is on, and the gradients are those of the plain backward."""
    from objkit.testing.encoders import build_encoder, encoder_batch

    encoder = build_encoder(_hf_mlm(), FAMILIES["distilbert"]).train()
    ids, mask = encoder_batch(encoder)

    def grads() -> list[torch.Tensor]:
        encoder.zero_grad()
        encoder(ids, mask, up_to_layer=2)[-1].pow(2).mean().backward()
        return [p.grad.clone() for p in encoder.parameters() if p.grad is not None]

    plain = grads()
    encoder.set_activation_checkpointing(True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in encoder.modules())
    for a, b in zip(grads(), plain, strict=True):
        torch.testing.assert_close(a, b)
    encoder.set_activation_checkpointing(False)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in encoder.modules())


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["xlm-roberta", "distilbert"])
def test_hf_mlm_on_cuda_under_bf16_autocast(family):
    """On a GPU, under the trainer's bf16 autocast: a truncated pass equals the full pass's layer
    and the LM head (the model's own forward on the given rows) gives the vocabulary's logits."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from objkit.testing.encoders import build_encoder, encoder_batch

    encoder = build_encoder(_hf_mlm(), FAMILIES[family]).cuda()
    ids, mask = (t.cuda() for t in encoder_batch(encoder))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = encoder(ids, mask)
        cut = encoder(ids, mask, up_to_layer=2)
        logits = encoder.lm_logits(full[-1][mask.bool()])
    torch.testing.assert_close(cut[2].float(), full[2].float(), rtol=2e-2, atol=2e-2)
    assert logits.shape == (int(mask.sum()), encoder.vocab_size) and torch.isfinite(logits.float()).all()


def test_a_pairwise_attention_mask_is_refused_in_one_line():
    """hf_mlm does not promise API 1.5's [B, L, L] masks (camlm, btmlm): a UserError, not a wrong answer."""
    from objkit.testing.encoders import build_encoder

    encoder = build_encoder(_hf_mlm(), FAMILIES["distilbert"])
    ids = torch.tensor([[2, 5, 6, 3]])
    with pytest.raises(UserError, match=r"^model.encoder: hf_mlm takes only a \[batch, length\] padding mask"):
        encoder(ids, torch.ones(1, 4, 4, dtype=torch.bool))


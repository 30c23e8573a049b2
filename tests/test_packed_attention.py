"""Unpadded packed attention (``packing = "documents"``): packed rows give the padded layout's
per-token loss and gradients (CPU, SDPA's math kernel, fp32), and the options are validated."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from objkit.contract.errors import UserError
from objkit.blocks.masking import IGNORE_INDEX, masked_lm_output
from objkit.blocks.packed import document_attention_mask, document_lengths, pack_documents
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.blocks.seeding import SAMPLE_SEED, sample_seed
from objkit.testing import build_context, tiny_encoder
from objkit_plugins.mlm import MaskedLM, MLMConfig
from objkit_plugins.tlm import TLMConfig, TranslationLM
from tiny_recipes import tiny_recipe

MAX_LENGTH = 24
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}
"""fp32, math kernel: packed and padded per-token losses and gradients agree to this (measured:
about 1e-6 at most); the negative control (no document mask) differs by more than 1e-4 and a
hundred times the packed difference (a random tiny model's attention is nearly uniform)."""
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}


def _encoder():
    return tiny_encoder(num_layers=2, max_length=MAX_LENGTH).eval()


def _objective(cls, config, encoder, name):
    return cls(config, build_context(encoder, registry=default_registry(), instance_name=name, max_length=MAX_LENGTH))


def _sentences(n: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """``<s> s </s>`` rows of 1 to MAX_LENGTH - 2 tokens; the first token numbers the sentence."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        body = [5 + k] + [rng.randrange(5 + n, vocab_size - 1) for _ in range(rng.randrange(0, MAX_LENGTH - 2))]
        out.append({"input_ids": [0, *body, 2], "group": "en", SAMPLE_SEED: sample_seed(7, "mlm", 0, k)})
    return out


def _pairs(n: int, vocab_size: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    tlm = _objective(TranslationLM, TLMConfig(), _encoder(), "tlm")
    out = []
    for k in range(n):
        src = [5 + k] + [rng.randrange(5 + n, vocab_size - 1) for _ in range(rng.randrange(0, 12))]
        tgt = [rng.randrange(5 + n, vocab_size - 1) for _ in range(rng.randrange(1, 12))]
        row = tlm._layout({"src_ids": src, "tgt_ids": tgt})
        out.append({**row, "src_lang": "en", "tgt_lang": "de", "group": "en-de",
                    SAMPLE_SEED: sample_seed(7, "tlm", 0, k)})
    return out


def _documents(batch: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Each document's tokens (keyed by its unmasked tokens), as ``{key: [n] tensor}``, from
    either layout; ``row``/``col`` say where its tokens sit."""
    docs = batch.get("document_ids", batch["attention_mask"])
    out = {}
    for row in range(docs.shape[0]):
        for d in docs[row].unique().tolist():
            if d == 0:
                continue
            cols = (docs[row] == d).nonzero().squeeze(1)
            doc = {k: v[row, cols] for k, v in batch.items() if k != "document_ids"}
            doc["row"], doc["col"] = torch.full_like(cols, row), cols
            original = torch.where(doc["labels"] == IGNORE_INDEX, doc["input_ids"], doc["labels"])
            out[tuple(original.tolist())] = doc  # the unmasked tokens name the document (all differ)
    return out


@torch.no_grad()
def _token_losses(encoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token cross-entropy at every position (not only the masked ones), ``[B, L]``."""
    if "document_ids" in batch:
        hidden = encoder.forward_documents(batch["input_ids"], batch["document_ids"],
                                           position_ids=batch.get("position_ids"),
                                           token_type_ids=batch.get("token_type_ids"))[-1]
    else:
        hidden = encoder(batch["input_ids"], batch["attention_mask"], position_ids=batch.get("position_ids"),
                         token_type_ids=batch.get("token_type_ids"))[-1]
    logits = encoder.lm_logits(hidden)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["input_ids"], reduction="none")


def _grads(encoder, batch) -> tuple[float, dict[str, torch.Tensor]]:
    encoder.zero_grad(set_to_none=True)
    loss = masked_lm_output(encoder, batch).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


def _check_equivalent(encoder, padded, packed) -> None:
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # packing did pack
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum())  # every token, once
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # fewer slots
    a, b = _documents(padded), _documents(packed)
    assert sorted(a) == sorted(b) and len(a) == padded["input_ids"].shape[0]
    for k in a:  # the same tokens, masking choices, labels, positions and token types per document
        for key in ("input_ids", "labels", "position_ids", "token_type_ids"):
            if key in padded:
                assert torch.equal(a[k][key], b[k][key]), (k, key)
    with sdpa_kernel(SDPBackend.MATH):
        la, lb = _token_losses(encoder, padded), _token_losses(encoder, packed)
        for k in a:  # every real token's loss, not only the masked ones
            torch.testing.assert_close(lb[b[k]["row"], b[k]["col"]], la[a[k]["row"], a[k]["col"]], **LOSS_TOL)
        same = max(float((lb[b[k]["row"], b[k]["col"]] - la[a[k]["row"], a[k]["col"]]).abs().max()) for k in a)
        loss_a, grads_a = _grads(encoder, padded)
        loss_b, grads_b = _grads(encoder, packed)
        assert loss_b == pytest.approx(loss_a, rel=1e-5)
        assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], **GRAD_TOL, msg=name)
        # the test can fail: the same packed rows without the document mask (a padding mask only,
        # sentences attending to each other) do not give the padded losses
        crossed = {k: v for k, v in packed.items() if k != "document_ids"}
        lc = _token_losses(encoder, crossed)
        worst = max(float((lc[b[k]["row"], b[k]["col"]] - la[a[k]["row"], a[k]["col"]]).abs().max()) for k in a)
        print(f"largest per-token loss difference: packed {same:.2e}, packed without the document mask {worst:.2e}")
        assert worst > 1e-4 and worst > 100 * same


def test_mlm_packed_rows_give_the_padded_loss_and_gradients():
    encoder = _encoder()
    none = _objective(MaskedLM, MLMConfig(packing="none", mask_prob=0.3), encoder, "mlm")
    documents = _objective(MaskedLM, MLMConfig(packing="documents", mask_prob=0.3), encoder, "mlm")
    examples = _sentences(12, encoder.vocab_size)
    padded = none.collate([dict(e) for e in examples], torch.Generator().manual_seed(3))
    packed = documents.collate([dict(e) for e in examples], torch.Generator().manual_seed(3))
    assert documents.sample_size(packed) == none.sample_size(padded) > 0
    _check_equivalent(encoder, padded, packed)


@pytest.mark.parametrize("options", [{}, {"reset_positions": True, "random_order": True,
                                          "language_embeddings": True, "languages": ["en", "de"]}])
def test_tlm_packed_pairs_give_the_padded_loss_and_gradients(options):
    encoder = _encoder()
    none = _objective(TranslationLM, TLMConfig(mask_prob=0.3, **options), encoder, "tlm")
    documents = _objective(TranslationLM, TLMConfig(packing="documents", mask_prob=0.3, **options), encoder, "tlm")
    examples = _pairs(12, encoder.vocab_size)
    padded = none.collate([dict(e) for e in examples], torch.Generator().manual_seed(3))
    packed = documents.collate([dict(e) for e in examples], torch.Generator().manual_seed(3))
    assert ("position_ids" in padded) == bool(options) and "position_ids" in packed
    _check_equivalent(encoder, padded, packed)


def test_pack_documents_layout():
    ids = torch.tensor([[0, 7, 8, 2, 1], [0, 9, 2, 1, 1], [0, 5, 6, 7, 2]])
    mask = (ids != 1).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 1] = 7
    out = pack_documents({"input_ids": ids, "attention_mask": mask, "labels": labels}, 8, pad_id=1,
                         first_position=2, pad_position=1)
    # first fit by decreasing length: [doc2 (5) + doc1 (3)], [doc0 (4)]
    assert out["input_ids"].tolist() == [[0, 5, 6, 7, 2, 0, 9, 2], [0, 7, 8, 2, 1, 1, 1, 1]]
    assert out["position_ids"].tolist() == [[2, 3, 4, 5, 6, 2, 3, 4], [2, 3, 4, 5, 1, 1, 1, 1]]
    assert out["document_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]
    assert out["labels"][1, 1] == 7 and int((out["labels"] != IGNORE_INDEX).sum()) == 1
    assert document_lengths(out["document_ids"]).tolist() == [5, 3, 4]
    allowed = document_attention_mask(out["document_ids"])
    assert allowed[0, 0, :5].all() and not allowed[0, 0, 5:].any() and allowed[1, 5, 4:].all()
    with pytest.raises(ValueError, match="does not fit rows of 4"):
        pack_documents({"input_ids": ids, "attention_mask": mask}, 4, pad_id=1, first_position=2, pad_position=1)
    with pytest.raises(ValueError, match="pack the batch keys"):
        pack_documents({"input_ids": ids, "attention_mask": mask, "src": ids}, 8, pad_id=1, first_position=2,
                       pad_position=1)


RECIPE = tiny_recipe("packed", dropout=0.0) + """
[objectives.mlm]
data = "mono"
packing = "none"
[objectives.tlm]
data = "parallel"
[train]
steps = 2
batch_size = 8
lr = 1e-3
seed = 3
log_every = 1
checkpoint_every = 1000
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("packed") / "recipe.toml"
    path.write_text(RECIPE)
    return path


def test_training_steps_packed_equal_padded(recipe_path, tmp_path):
    """Through the trainer: two optimizer steps of MLM + TLM give the same losses and weights
    padded and packed (the same sentences and pairs are drawn: batch_size counts documents)."""
    from objkit.train.trainer import Trainer

    runs = {}
    for packing in ("none", "documents"):
        sets = [f"objectives.mlm.packing={packing}", f'objectives.tlm.packing={"none" if packing == "none" else packing}',
                "train.packed_attention=mask"]
        trainer = Trainer(load_recipe(recipe_path, sets), tmp_path / packing, default_registry(), progress=False)
        losses = []
        with sdpa_kernel(SDPBackend.MATH):
            for _ in range(2):
                stats = trainer.train_step()
                losses.append({k: float(v) / stats.units[k] for k, v in stats.sums.items() if k.endswith("/loss")})
        runs[packing] = (losses, trainer)
    (a, ta), (b, tb) = runs["none"], runs["documents"]
    assert sorted(a[0]) == ["mlm/loss", "tlm/loss"]
    for step_a, step_b in zip(a, b, strict=True):
        for key in step_a:
            assert step_b[key] == pytest.approx(step_a[key], rel=1e-5), key
    for (name, pa), (_, pb) in zip(ta.encoder.named_parameters(), tb.encoder.named_parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(("setting", "key"), [
    ("objectives.mlm.packing=packed", "objectives.mlm.packing"),
    ("objectives.tlm.packing=complete", "objectives.tlm.packing"),
    ("train.packed_attention=flash", "train.packed_attention"),
])
def test_bad_packing_values_are_one_line_errors_naming_the_key(recipe_path, setting, key):
    with pytest.raises(UserError) as info:
        load_recipe(recipe_path, [setting])
    message = str(info.value)
    assert key in message and "\n" not in message.strip(), message


def test_varlen_where_it_cannot_run_is_refused_naming_the_key(recipe_path, tmp_path):
    from objkit.train.trainer import Trainer

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run varlen")
    with pytest.raises(UserError, match=r"^train\.packed_attention: varlen needs CUDA") as info:
        Trainer(load_recipe(recipe_path, ["train.packed_attention=varlen", "objectives.mlm.packing=documents"]),
                tmp_path / "run", default_registry(), progress=False)
    assert "\n" not in str(info.value)


def test_varlen_is_refused_for_an_encoder_without_a_kernel_of_its_own(recipe_path):
    """An encoder that keeps the default forward_documents (the block-diagonal mask) honours
    ``mask`` and ``auto`` but not ``varlen``: one line naming the key, not a silent mask."""
    from objkit.distributed import ParallelStrategy
    from objkit.contract.interfaces import Encoder, WorldInfo
    from objkit.train.memory import apply_train_options, encoder_run_options
    from objkit_plugins.xlmr import XLMREncoder, architecture

    class MaskOnly(XLMREncoder):
        forward_documents = Encoder.forward_documents

    resolved = load_recipe(recipe_path, ["train.packed_attention=mask"])
    encoder = MaskOnly.from_hf_config(architecture(resolved.encoder_config, 300))
    strategy = ParallelStrategy(encoder, [], WorldInfo())
    for setting in ("mask", "auto"):
        train = load_recipe(recipe_path, [f"train.packed_attention={setting}"]).recipe.train
        encoder.run_options = encoder_run_options(train, [], 1, "fp32")
        apply_train_options(encoder, strategy, [], train, torch.device("cpu"))
    train = load_recipe(recipe_path, ["train.packed_attention=varlen"]).recipe.train
    encoder.run_options = encoder_run_options(train, [], 1, "fp32")
    with pytest.raises(UserError, match=r"^train\.packed_attention: encoder 'xlmr' does not honour 'varlen'"):
        apply_train_options(encoder, strategy, [], train, torch.device("cpu"))


def test_sentence_rows_one_sentence_a_row_truncated_empty_dropped():
    import datasets

    from objkit import sentence_rows

    rows = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [], [8] * 10], "group": ["en", "en", "de"]})
    want = [[0, 5, 6, 7, 2], [0, 8, 8, 8, 8, 2]]
    assert sentence_rows(rows, 6, 0, 2)["input_ids"] == want
    assert [r["input_ids"] for r in sentence_rows(rows.to_iterable_dataset(), 6, 0, 2)] == want
    assert sentence_rows(rows, 6, 0, 2)["group"] == ["en", "de"]

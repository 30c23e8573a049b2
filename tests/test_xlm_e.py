"""XLM-E's replaced-token detection (``mrtd``, ``trtd``): conformance, labels, shared embeddings,
and a quickstart run that logs the discriminator's accuracy on replaced and original tokens."""

from __future__ import annotations

import json

import pytest
import torch

from objkit import StepContext
from objkit.testing import Case, ObjectiveConformance
from objkit.testing._common import build_context, registry_with, tiny_encoder
from tiny_recipes import tiny_recipe
from objkit_plugins.xlm_e import MultilingualRTD, RTDConfig, TranslationRTD


class TestMRTD(ObjectiveConformance):
    plugin = "mrtd"
    distribution = "objkit"
    configs = [{}, Case({"generator_depth": 0.5, "generator_width": 0.5, "disc_weight": 10.0, "mask_specials": True})]
    bad_configs = [{"disc_weight": 0.0}, {"generator_depth": 0.0}, {"generator_width": 1.5}, {"temperature": -1.0}]


class TestTRTD(ObjectiveConformance):
    plugin = "trtd"
    distribution = "objkit"
    configs = [{}, {"generator_depth": 0.25, "mask_prob": 0.3}]
    bad_configs = [{"generator_dropout": 1.0}, {"mask_prob": 0.0}]


def build(cls=MultilingualRTD, **config):
    torch.manual_seed(0)
    encoder = tiny_encoder(seed=0)
    return cls(RTDConfig(**config), build_context(encoder, registry=registry_with(cls))), encoder


def test_generator_shares_the_discriminator_token_embeddings():
    objective, encoder = build()
    table = encoder.body().get_input_embeddings()
    assert objective.embedding is table
    assert objective.embedding.weight is table.weight  # one tensor, not a copy
    own = {id(p) for p in objective.generator.parameters()}
    assert id(table.weight) not in own  # not optimised twice, not saved twice
    # the generator's MLM loss reaches the shared table
    batch = objective.collate([{"input_ids": [0, 5, 6, 7, 8, 9, 10, 11, 2]}] * 2, torch.Generator().manual_seed(0))
    out = objective.compute(batch, StepContext(step=0, encoder=encoder, device=torch.device("cpu")))
    out.loss.backward()
    assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    assert objective.generator.body.encoder.layer[0].attention.self.query.weight.grad is not None
    assert len(objective.generator.body.encoder.layer) == round(encoder.num_layers / 3)


def test_replaced_tokens_are_labelled_replaced_and_equal_samples_original():
    original = torch.tensor([[0, 10, 11, 12, 13, 2]])
    corrupted = torch.tensor([[0, 10, 40, 12, 13, 2]])  # position 2 replaced; position 3 "sampled" = original
    labels = MultilingualRTD.replaced_labels(original, corrupted)
    assert labels.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]


def test_sampling_labels_in_compute_follow_the_sample():
    """Through the real compute: a generator whose softmax puts all mass on the original token
    produces no replaced token; one that puts it on another token replaces every masked one."""
    objective, encoder = build(mask_prob=0.5)
    examples = [{"input_ids": [0, *range(10, 20), 2]} for _ in range(3)]
    batch = objective.collate(examples, torch.Generator().manual_seed(1))
    selected = batch["labels"] != -100
    targets = batch["labels"][selected]
    vocab = encoder.vocab_size
    certain = torch.full((int(selected.sum()), vocab), -1e4)
    certain[torch.arange(len(targets)), targets] = 0.0
    samples = objective.sample(certain, batch["uniforms"][selected])
    assert torch.equal(samples, targets)
    corrupted = batch["original_ids"].clone()
    corrupted[selected] = samples
    assert objective.replaced_labels(batch["original_ids"], corrupted).sum() == 0
    other = torch.full_like(certain, -1e4)
    other[:, 4] = 0.0
    samples = objective.sample(other, batch["uniforms"][selected])
    corrupted[selected] = samples
    replaced = objective.replaced_labels(batch["original_ids"], corrupted)
    assert torch.equal(replaced.bool(), selected)


def test_disc_auc_is_the_pairwise_ranking_probability():
    """``disc_auc`` (ELECTRA's metric) against its definition, the fraction of (replaced,
    original) pairs where the replaced token scores higher; 0.5 when a class is missing."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(300, generator=generator)
    truth = (torch.rand(300, generator=generator) < 0.15).float()
    scores = scores + 0.8 * truth  # partly separated: neither 0.5 nor 1.0
    pos, neg = scores[truth == 1], scores[truth == 0]
    pairwise = (pos[:, None] > neg[None, :]).float().mean()
    auc = MultilingualRTD.ranking_auc(scores, truth)
    assert auc.shape == () and abs(float(auc) - float(pairwise)) < 1e-6
    assert 0.6 < float(auc) < 0.95
    assert float(MultilingualRTD.ranking_auc(truth * 5.0, truth)) == 1.0
    assert float(MultilingualRTD.ranking_auc(-truth, truth)) == 0.0
    assert float(MultilingualRTD.ranking_auc(scores, torch.zeros(300))) == 0.5


def test_trtd_lays_a_pair_out_like_tlm():
    objective, _ = build(TranslationRTD)
    row = objective._layout({"src_ids": [10, 11, 12], "tgt_ids": [20, 21]})
    assert row["input_ids"] == [0, 10, 11, 12, 2, 20, 21, 2]


TINY_RTD = tiny_recipe("tiny-xlm-e") + """
[objectives.mrtd]
data = "mono"
[objectives.trtd]
data = "parallel"
generator_depth = 0.5
[train]
steps = 4
batch_size = 8
lr = 2e-3
warmup_steps = 1
seed = 3
log_every = 2
checkpoint_every = 4
"""


@pytest.mark.slow
def test_run_logs_discriminator_accuracy_and_checkpoints_the_generator(tmp_path, monkeypatch):
    """A short run through the command line (in process): the discriminator's accuracy on
    replaced and on original tokens is logged; the generator and the head are in the
    checkpoint; the export is the discriminator alone."""
    from safetensors import safe_open
    from transformers import AutoModel

    from objkit.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny_xlm_e.toml"
    recipe.write_text(TINY_RTD)
    run = tmp_path / "run"
    try:
        main(["run", str(recipe), "-o", str(run)])
    except SystemExit as done:  # click may end a successful command this way
        assert done.code in (0, None)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records if "mrtd/acc_replaced" in r] == [2, 4]
    for record in records:
        for key in ("mrtd/acc_replaced", "mrtd/acc_original", "trtd/acc_replaced", "trtd/acc_original",
                    "mrtd/disc_auc", "trtd/disc_auc"):
            assert 0.0 <= record[key] <= 1.0
        assert 0.0 < record["mrtd/replaced"] < 1.0
    checkpoint = run / "checkpoints" / "step_0000004"
    with safe_open(str(checkpoint / "objectives.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert any(k.startswith("mrtd/generator/body.encoder.layer.0.") for k in shapes)
    assert "trtd/disc_head/2.weight" in shapes
    # the shared token table is the discriminator's (in model.safetensors), not copied here:
    # the generator's own word table is its frozen one-row placeholder
    assert shapes["mrtd/generator/body.embeddings.word_embeddings.weight"] == (1, 32)
    model = AutoModel.from_pretrained(run / "export")
    assert model.config.num_hidden_layers == 2  # the discriminator, not a generator


def test_discriminator_learns_replacements_it_can_see():
    """End to end through compute: on sequences of one repeated token, every replacement is
    visible from the token alone, and the discriminator learns to flag it (a misaligned label,
    a head on the wrong positions or a loss that does not reach the encoder would not)."""
    torch.manual_seed(0)
    encoder = tiny_encoder(seed=0, num_layers=2, hidden_size=32)
    objective = MultilingualRTD(RTDConfig(generator_depth=0.5),
                                build_context(encoder, registry=registry_with(MultilingualRTD)))
    objective.generator.requires_grad_(False)  # a fixed random generator: its samples are ~random tokens
    params = [p for m in (encoder, objective.head) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(30):
        examples = [{"input_ids": [0, *[10] * 12, 2], "sample_seed": step * 100 + r} for r in range(8)]
        out = objective.compute(objective.collate(examples, generator),
                                StepContext(step=step, encoder=encoder, device=torch.device("cpu")))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(out.metrics["acc_replaced"]) > 0.9 and float(out.metrics["acc_original"]) > 0.95
    assert float(out.metrics["disc_auc"]) > 0.95

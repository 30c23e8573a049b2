"""XLCO's additive margin (LaBSE, Feng et al., ACL 2022, eq. 4): margin 0 is the loss without a
margin bit for bit; margin m is InfoNCE with the positive cosine reduced by m before τ, computed
here independently with ``F.cross_entropy``; a larger margin raises the loss and pushes the
positive harder; a margin without ``normalize`` is refused; the margin recipes validate."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from objkit import StepContext
from objkit.blocks.contrastive import info_nce
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import Registry
from tests.plugins.test_xlco import build, pairs, tiny_encoder

RECIPES = Path(__file__).parent.parent.parent / "recipes"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_entry_points()


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def margin_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, m: float, tau: float) -> torch.Tensor:
    """LaBSE's additive margin softmax written out: query i's candidates are every key of the
    batch (its own, key i, is the positive, at cos − m) and the queue; logits / τ."""
    cos = q @ k.T - m * torch.eye(q.shape[0])
    logits = torch.cat([cos, q @ queue.T], dim=1) / tau
    return F.cross_entropy(logits, torch.arange(q.shape[0]))


# ----------------------------------------------------------------------------- the loss
def test_margin_zero_is_the_loss_without_a_margin_bit_for_bit():
    q, k, queue = unit(5, 8, seed=0), unit(5, 8, seed=1), unit(7, 8, seed=2)
    eye = torch.eye(5, dtype=torch.bool)
    # the loss as it was before margins: the same operations, no subtraction
    pos = (q * k).sum(dim=-1, keepdim=True)
    logits = torch.cat([pos, q @ queue.T, q @ k.T], dim=1) * 20.0
    logits = logits.masked_fill(torch.cat([torch.zeros_like(pos, dtype=torch.bool), torch.zeros(5, 7, dtype=torch.bool),
                                           eye], dim=1), float("-inf"))
    before = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    for margin in ({}, {"margin": 0.0}):
        res = info_nce(q, k, [queue, k], scale=20.0, exclude=[None, eye], **margin)
        assert torch.equal(res.loss, before)


@pytest.mark.parametrize("m", [0.1, 0.3])
def test_margin_is_infonce_with_the_positive_cosine_reduced_before_tau(m):
    q, k, queue = unit(6, 8, seed=3), unit(6, 8, seed=4), unit(9, 8, seed=5)
    eye = torch.eye(6, dtype=torch.bool)
    res = info_nce(q, k, [queue, k], scale=1 / 0.05, margin=m, exclude=[None, eye])
    torch.testing.assert_close(res.loss, margin_loss(q, k, queue, m, 0.05))
    # not the logit: subtracting m after τ is a different (smaller) margin
    logits_after = torch.cat([q @ k.T / 0.05 - m * torch.eye(6), q @ queue.T / 0.05], dim=1)
    assert not torch.allclose(res.loss, F.cross_entropy(logits_after, torch.arange(6)))


def test_margin_raises_the_loss_and_pushes_the_positive_harder():
    # positives near their queries (cos ≈ 0.9), so the softmax is not saturated at m = 0
    q, queue = unit(6, 8, seed=6), unit(9, 8, seed=7)
    near = F.normalize(q + 0.3 * unit(6, 8, seed=8), dim=-1)
    losses, pulls = [], []
    for m in (0.0, 0.1, 0.3, 0.5):
        k = near.clone().requires_grad_(True)
        res = info_nce(q, k, [queue], scale=5.0, margin=m)
        res.loss.backward()
        losses.append(float(res.loss.detach()))
        pulls.append(-(k.grad * q).sum(dim=-1))  # how hard each positive key is pulled towards its query
        assert float(res.top1) == float(info_nce(q, near, [queue], scale=5.0).top1)  # ranking unchanged
    assert losses == sorted(losses) and len(set(losses)) == 4
    for weaker, stronger in zip(pulls, pulls[1:]):
        assert (stronger > weaker).all()


# ----------------------------------------------------------------------------- the objective
def test_xlco_margin_is_labse_bidirectional_ranking_on_in_batch_negatives(registry):
    """The whole objective, in_batch negatives, both directions: each direction's loss is the
    additive margin softmax over the batch's keys (LaBSE's eq. 4), averaged over the two."""
    m, tau = 0.3, 0.1
    encoder = tiny_encoder().eval()
    obj = build(registry, encoder, negatives={"in_batch": {}}, symmetric=True, normalize=True, projection=False,
                temperature=tau, margin=m, mask_inputs=False, length_groups=1, pooling="mean")
    batch = obj.collate(pairs(6, seed=11), torch.Generator().manual_seed(0))
    out = obj.compute(batch, StepContext(0, encoder, torch.device("cpu")))
    with torch.no_grad():
        sides = {p: (batch[f"{p}input_ids"], batch[f"{p}attention_mask"]) for p in ("", "key_")}
        q = {p: obj.encode_queries(encoder, *sides[p]) for p in sides}
        k = {p: obj.encode_keys(*sides[p], training=False) for p in sides}
        none = torch.zeros(0, q[""].shape[1])
        expected = (margin_loss(q[""], k["key_"], none, m, tau) + margin_loss(q["key_"], k[""], none, m, tau)) / 2
    torch.testing.assert_close(out.loss.detach(), expected)
    assert out.sample_size == 12


def test_xlco_margin_zero_equals_no_margin_key_with_the_queue(registry):
    """margin = 0 through the objective (queue + in-batch, two steps): loss and gradients
    equal to the recipe without the key, bit for bit."""
    results = []
    for keys in ({}, {"margin": 0.0}):
        encoder = tiny_encoder()
        torch.manual_seed(0)
        obj = build(registry, encoder, normalize=True, symmetric=True,
                    negatives={"in_batch": {}, "momentum_queue": {"size": 8, "fill_before_start": False}}, **keys)
        losses, grads = [], []
        for step in range(2):
            batch = obj.collate(pairs(4, seed=20 + step), torch.Generator().manual_seed(step))
            out = obj.compute(batch, StepContext(step, encoder, torch.device("cpu")))
            out.loss.backward()
            losses.append(out.loss.detach())
            grads.append([p.grad.clone() for p in encoder.parameters() if p.grad is not None])
            encoder.zero_grad()
        results.append((losses, grads))
    (l0, g0), (l1, g1) = results
    assert all(torch.equal(a, b) for a, b in zip(l0, l1, strict=True)) and float(l0[1]) > 0
    assert all(torch.equal(a, b) for s0, s1 in zip(g0, g1, strict=True) for a, b in zip(s0, s1, strict=True))


def test_margin_without_normalize_is_refused(registry):
    info = registry.get("xlco", kind="objective")
    problems = info.cls.check(info.cls.Config.model_validate({"margin": 0.3}), registry)
    assert problems == ["margin: an additive margin is subtracted from the positive's cosine; set normalize = true "
                        "(got margin = 0.3 with normalize = false)"]
    assert info.cls.check(info.cls.Config.model_validate({"margin": 0.3, "normalize": True}), registry) == []
    assert info.cls.check(info.cls.Config.model_validate({}), registry) == []


# ----------------------------------------------------------------------------- recipes
def test_margin_recipes_add_only_the_margin_settings():
    def xlco(name: str) -> dict:
        return tomllib.loads(load_recipe(RECIPES / name).to_toml())["objectives"]["xlco"]

    quick, base = xlco("quickstart_infoxlm_margin.toml"), xlco("quickstart_infoxlm.toml")
    assert quick["margin"] == 0.3 and base["margin"] == 0.0
    assert {key for key in quick if quick[key] != base[key]} == {"margin"}
    full, paper = xlco("infoxlm_base_margin.toml"), xlco("infoxlm_base.toml")
    assert full["margin"] == 0.3 and full["normalize"] and full["symmetric"]
    assert {key for key in full if full[key] != paper[key]} == {"margin", "normalize", "temperature", "symmetric"}

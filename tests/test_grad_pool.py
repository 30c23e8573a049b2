"""objkit.blocks.grad_pool: the storage of gradients written in place (embedding lookups, the fused LM
head) is kept from one optimizer step to the next, while ``.grad`` keeps zero_grad's ``None``
semantics (a parameter without a gradient in a step is not moved by AdamW), and training
computes the same bits as when the storage is freed every step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from objkit.blocks.grad_pool import drop_spare_grads, grad_into, release_grads, spare_grad_bytes
from objkit.train.memory import set_embedding_grad_in_place
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.trainer import Trainer
from tiny_recipes import tiny_recipe


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(50, 8, padding_idx=1)
        self.other = nn.Linear(8, 1)


def _lookup_loss(model: _Model, ids: torch.Tensor) -> torch.Tensor:
    return (model.table(ids) ** 2).sum()


def test_storage_is_reused_and_a_parameter_without_gradient_is_not_moved():
    model = _Model()
    assert set_embedding_grad_in_place(model, True) == 1
    reference = _Model()  # plain nn.Embedding: autograd's dense gradient
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.5)
    ids = torch.tensor([[3, 4, 1, 3], [7, 1, 9, 3]])

    _lookup_loss(model, ids).backward()
    _lookup_loss(reference, ids).backward()
    first = model.table.weight.grad
    assert torch.equal(first, reference.table.weight.grad)
    storage = first.data_ptr()
    optimizer.step()
    assert release_grads(params) == first.numel() * first.element_size()
    assert all(p.grad is None for p in params)  # as zero_grad(set_to_none=True)
    assert spare_grad_bytes(params) == first.numel() * first.element_size()

    # a step in which the table gets no gradient: .grad stays None, AdamW leaves the table alone
    # (a zero tensor there would move it: weight decay and the first moment)
    table_before = model.table.weight.detach().clone()
    model.other(model.table.weight.detach()[:2]).sum().backward()
    assert model.table.weight.grad is None
    optimizer.step()
    assert torch.equal(model.table.weight, table_before)
    assert optimizer.state[model.table.weight]["step"].item() == 1
    release_grads(params)
    assert spare_grad_bytes(params) == first.numel() * first.element_size()  # kept through that step

    # the next step that writes the table's gradient gets the kept storage, zeroed first
    ids2 = torch.tensor([[5, 3, 1, 2]])
    _lookup_loss(model, ids2).backward()
    reference.zero_grad(set_to_none=True)
    reference.table.weight.data.copy_(model.table.weight.data)
    _lookup_loss(reference, ids2).backward()
    assert model.table.weight.grad.data_ptr() == storage
    assert torch.equal(model.table.weight.grad, reference.table.weight.grad)
    assert spare_grad_bytes(params) == 0  # handed out


def test_keep_false_frees_and_a_mismatched_spare_is_not_used():
    param = nn.Parameter(torch.ones(4, 3))
    grad_into(param).add_(2.0)
    assert release_grads([param], keep=False) == 0 and param.grad is None and spare_grad_bytes([param]) == 0
    grad_into(param).add_(2.0)
    release_grads([param])
    assert spare_grad_bytes([param]) == 48
    param.data = torch.ones(5, 3)  # resized (e.g. a grown vocabulary): the old storage does not fit
    assert torch.equal(grad_into(param), torch.zeros(5, 3))
    release_grads([param])
    drop_spare_grads([param])
    assert spare_grad_bytes([param]) == 0


def test_a_gradient_autograd_made_is_not_kept():
    param = nn.Parameter(torch.ones(3))
    (param * 2).sum().backward()
    grad_into(param).add_(1.0)  # .grad existed: added into, not marked as written in place
    assert torch.equal(param.grad, torch.full((3,), 3.0))
    assert release_grads([param]) == 0 and param.grad is None and spare_grad_bytes([param]) == 0


RECIPE = tiny_recipe("grad_pool") + """
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[train]
steps = 100
batch_size = 8
micro_batch_size = 4
lr = 3e-3
seed = 5
log_every = 1000
checkpoint_every = 1000
"""


@pytest.mark.parametrize("chunk", [0, 5])
def test_trainer_reuses_the_storage_and_trains_the_same_bits(tmp_path, chunk):
    """Two accumulated micro-batches, MLM and TLM: the tied embedding's gradient is written in
    place by the lookups (and by the fused head with ``train.lm_head_chunk_rows``); keeping its
    storage gives the same losses and weights, bit for bit, as freeing it every step."""
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    runs = {}
    for keep in (True, False):
        trainer = Trainer(load_recipe(path, [f"train.lm_head_chunk_rows={chunk}"]), tmp_path / f"run{keep}",
                          default_registry(), progress=False)
        trainer.keep_grad_storage = keep
        table = trainer.encoder.mlm.get_input_embeddings().weight
        storages: list[int] = []
        trainer.optimizer.register_step_pre_hook(lambda *_: storages.append(table.grad.data_ptr()))
        losses = []
        for _ in range(3):
            stats = trainer.train_step()
            losses.append({k: float(v) for k, v in sums.items()} if (sums := stats.sums) else {})
            assert all(p.grad is None for p in trainer.params)
        runs[keep] = (losses, {n: p.detach().clone() for n, p in trainer.encoder.named_parameters()})
        if keep:
            assert storages[1] == storages[2]  # the first step's storage, kept
            assert spare_grad_bytes([table]) == table.numel() * table.element_size()
        else:
            assert spare_grad_bytes([table]) == 0
    assert runs[True][0] == runs[False][0]
    for name, value in runs[True][1].items():
        assert torch.equal(value, runs[False][1][name]), name

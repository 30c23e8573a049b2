"""``xlm_align``: XLM-Align's denoising word alignment (DWA; Chi et al., ACL 2021), with TLM.

Reference: microsoft/unilm ``infoxlm/src-infoxlm/infoxlm`` (``tasks/xlm_align.py``,
``criterions/xlm_align.py``, ``models/xlm_align.py``). Per translation pair, laid out like TLM
(``<s> src </s> tgt </s>``):

1. **Self-labelling.** The model being trained, in eval mode and without gradients, encodes the
   *unmasked* pair up to layer ``wa_layer``; the raw dot products of the source × target block
   (no ``<s>``, ``</s>`` or padding) go through Sinkhorn without exp (entries ≤ 0 set to 1e-6,
   then ``sinkhorn_iter`` rounds of column- then row-normalisation), and subword links are
   extracted with SimAlign's itermax (``wa_max_count`` rounds, α = 0.9).
2. **Pointer loss.** One train-mode pass on the TLM-masked pair. Every TLM-predicted position
   that has a self-label is a query (the 10% random and 10% kept tokens too; a position with
   several links points at the last one, as the reference's dictionary does); a pointer head
   (``q`` and ``k``: d×d linear layers with bias) scores ``q(h_i)·k(h_j)/√d`` over the positions
   ``j`` of the *other* language's span only, and cross-entropy asks for the aligned position,
   in both directions (source queries point into the target and vice versa).
3. **TLM** on the same pass (``tlm_loss``), added. Before ``align_enable_step`` only TLM runs.

Differences from the reference, stated:

* **Normalisation.** The reference divides the summed pointer and TLM losses (and MLM's) by
  the total count of TLM predictions + pointer queries (+ MLM predictions). objkit must know an
  objective's unit count before its forward pass (it normalises the step by global counts
  across micro-batches and ranks), and the pointer queries are only known after the labelling
  pass; so the units here are the TLM predictions: the loss is (Σ pointer CE + Σ TLM CE) /
  predictions. With ``train.normalization = "reference"`` every objective's share of the step
  is the reference's, and the whole step's loss is larger by the factor
  (units + queries) / units ≤ 2, which Adam's update does not see (only gradient clipping
  does). Logged: ``pointer_loss`` (per query), ``tlm_loss`` (per prediction), ``pointer_acc``.
* The per-example order bit (``random_order``, like TLM's) and ``mask_specials`` are options,
  set by the paper recipe; masking is a Bernoulli draw per token (see ``objkit.mask_tokens``).

Third-party shape: this module imports only objkit's public names; per-example randomness comes
from each example's ``sample_seed`` (``objkit.example_seeds`` / ``objkit.derive_seed`` per
purpose), so the same on any number of ranks.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from objkit import (
    IGNORE_INDEX,
    PLUGIN_API_VERSION,
    BuildContext,
    MaskingConfig,
    Objective,
    ObjectiveOutput,
    StepContext,
    UserError,
    derive_seed,
    example_seeds,
    hookimpl,
    lm_head_loss,
    mask_tokens,
    pad_sequences,
    sample_uniform,
)


class XlmAlignConfig(MaskingConfig):
    wa_layer: int = Field(8, ge=0, description="layer of the self-labelling pass (reference code: 8; README: 10)")
    sinkhorn_iter: int = Field(2, ge=0, description="Sinkhorn rounds (column then row normalisation) before itermax")
    wa_max_count: int = Field(2, ge=1, description="itermax rounds (1 = plain mutual argmax)")
    align_enable_step: int = Field(0, ge=0, description="TLM alone before this step")
    tlm_loss: bool = Field(True, description="add the TLM loss of the same pass (reference: yes)")
    projection: bool = Field(True, description="q and k linear heads (false: identity, reference --no_linear_proj)")
    random_order: bool = Field(False, description="a seeded per-example bit puts the target side first")


def sinkhorn(sim: torch.Tensor, iterations: int) -> torch.Tensor:
    """The reference's Sinkhorn without exp: entries ≤ 0 become 1e-6, then ``iterations`` rounds
    of dividing by column sums and then by row sums."""
    pi = torch.where(sim > 0, sim, torch.full_like(sim, 1e-6))
    for _ in range(iterations):
        pi = pi / pi.sum(dim=0, keepdim=True)
        pi = pi / pi.sum(dim=1, keepdim=True)
    return pi


def itermax(sim: torch.Tensor, max_count: int = 2, alpha: float = 0.9) -> torch.Tensor:
    """SimAlign's IterMax on a non-negative ``[m, n]`` matrix: boolean links. Mutual argmaxes,
    then rounds among pairs with a free word (scaled by α when only one of them is free)."""
    m, n = sim.shape
    rows, cols = torch.arange(m, device=sim.device), torch.arange(n, device=sim.device)

    def mutual(scores: torch.Tensor) -> torch.Tensor:
        fwd = torch.zeros(m, n, dtype=torch.bool, device=sim.device)
        fwd[rows, scores.argmax(dim=1)] = True
        bwd = torch.zeros(m, n, dtype=torch.bool, device=sim.device)
        bwd[scores.argmax(dim=0), cols] = True
        return fwd & bwd

    links = mutual(sim)
    if min(m, n) <= 2:
        return links
    for _ in range(max_count - 1):
        row_free, col_free = ~links.any(dim=1), ~links.any(dim=0)
        if not row_free.any() or not col_free.any():
            break
        both = row_free[:, None] & col_free[None, :]
        either = row_free[:, None] | col_free[None, :]
        scale = torch.where(both, 1.0, torch.where(either, alpha, 0.0)).to(sim.dtype)
        new = mutual(sim * scale) & either
        if not new.any():
            break
        links |= new
    return links


class DenoisingWordAlignment(Objective):
    name: ClassVar[str] = "xlm_align"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[XlmAlignConfig]] = XlmAlignConfig
    data_kind = "parallel"

    def __init__(self, config: XlmAlignConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: XlmAlignConfig = config
        if config.wa_layer > ctx.encoder.num_layers:
            raise UserError(
                f"objectives.{ctx.instance_name}.wa_layer: {config.wa_layer} is deeper than the encoder "
                f"({ctx.encoder.num_layers} layers; 0 = embeddings) (got {config.wa_layer})"
            )
        self.vocab = ctx.vocab
        self.max_length = ctx.max_length
        self.dim = ctx.encoder.hidden_size
        self.q_linear: nn.Module = nn.Identity()
        self.k_linear: nn.Module = nn.Identity()
        if config.projection:
            self.q_linear = nn.Linear(self.dim, self.dim, device=ctx.device)
            self.k_linear = nn.Linear(self.dim, self.dim, device=ctx.device)

    # ------------------------------------------------------------------ data
    def prepare(self, dataset: Any) -> Any:
        kwargs = {"desc": "xlm_align pairs"} if hasattr(dataset, "num_rows") else {}
        return dataset.map(self._layout, remove_columns=["src_ids", "tgt_ids"], **kwargs)

    def _layout(self, row: dict[str, Any]) -> dict[str, Any]:
        src, tgt = list(row["src_ids"]), list(row["tgt_ids"])
        while len(src) + len(tgt) > self.max_length - 3:  # the longer side first, as TLM
            (src if len(src) >= len(tgt) else tgt).pop()
        return {"input_ids": [self.vocab.bos_id, *src, self.vocab.eos_id, *tgt, self.vocab.eos_id],
                "src_len": len(src) + 2}  # fmt: skip

    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        seeds = example_seeds(examples, generator)  # sample_seed; the generator only when called directly
        sequences, cuts = [], []
        for example, seed in zip(examples, seeds, strict=True):
            ids, cut = list(example["input_ids"]), int(example["src_len"])
            if self.config.random_order and sample_uniform(seed, "order") >= 0.5:
                ids, cut = [ids[0], *ids[cut:-1], ids[cut - 1], *ids[1 : cut - 1], ids[-1]], len(ids) - cut + 1
            sequences.append(ids)
            cuts.append(cut)
        clean, attention_mask = pad_sequences(sequences, self.vocab.pad_id)
        masked, labels = mask_tokens(clean, self.vocab, generator, self.config,
                                     seeds=[derive_seed(s, "mask") for s in seeds])  # fmt: skip
        lengths = torch.tensor([len(s) for s in sequences])
        cut = torch.tensor(cuts)
        # spans [start, end): source words 1 .. cut-2, target words cut .. len-2
        spans = torch.stack([torch.ones_like(cut), cut - 1, cut, lengths - 1], dim=1)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels,
                "clean_input_ids": clean, "spans": spans}  # fmt: skip

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def self_label(self, encoder: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` long: for each position, the position it is aligned to (-1 if none), from
        the model in eval mode on the unmasked pair."""
        was_training = encoder.training
        encoder.train(False)
        try:
            hidden = encoder(batch["clean_input_ids"], batch["attention_mask"],
                             up_to_layer=self.config.wa_layer)[self.config.wa_layer].float()  # fmt: skip
        finally:
            encoder.train(was_training)
        partner = torch.full(batch["input_ids"].shape, -1, dtype=torch.long, device=hidden.device)
        for row, (s0, s1, t0, t1) in enumerate(batch["spans"].tolist()):
            if s1 <= s0 or t1 <= t0:
                continue
            sim = hidden[row, s0:s1] @ hidden[row, t0:t1].T
            links = itermax(sinkhorn(sim, self.config.sinkhorn_iter), self.config.wa_max_count).nonzero().tolist()
            for i, j in links:  # row-major: a word with several links keeps the last one
                partner[row, s0 + i] = t0 + j
                partner[row, t0 + j] = s0 + i
        return partner

    def _tlm_only(self, step: int) -> bool:
        return step < self.config.align_enable_step

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    @property
    def uses_all_parameters(self) -> bool:
        # TLM-only steps leave the pointer heads unused; without TLM the LM head is unused
        return self.config.align_enable_step == 0 and self.config.tlm_loss

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        encoder = ctx.encoder
        tlm_only = self._tlm_only(ctx.step)
        partner = None if tlm_only else self.self_label(encoder, batch)
        hidden = encoder(batch["input_ids"], batch["attention_mask"])[-1]
        labels = batch["labels"]
        predicted = labels != IGNORE_INDEX
        units = int(predicted.sum())
        metrics: dict[str, float | torch.Tensor] = {}
        total = hidden.new_zeros((), dtype=torch.float32)
        if self.config.tlm_loss or tlm_only:
            head = lm_head_loss(encoder, hidden[predicted], labels[predicted], reduction="sum")  # chunked if asked
            tlm_sum = head.loss
            total = total + tlm_sum
            metrics["tlm_loss"] = tlm_sum.detach() / max(units, 1)  # tensors: read back once per log interval
            metrics["tlm_accuracy"] = head.accuracy
        if partner is not None:
            pointer_sum, queries, correct = self._pointer(hidden, batch, partner, predicted)
            total = total + pointer_sum
            metrics["pointer_loss"] = float(pointer_sum.detach()) / max(queries, 1)
            metrics["pointer_acc"] = 100.0 * correct / max(queries, 1)
            metrics["pointer_queries"] = queries / max(units, 1)
        return ObjectiveOutput(total / max(units, 1), units, metrics)

    def _pointer(
        self, hidden: torch.Tensor, batch: dict[str, torch.Tensor], partner: torch.Tensor, predicted: torch.Tensor
    ) -> tuple[torch.Tensor, int, int]:
        query = predicted & (partner >= 0)
        rows, positions = query.nonzero(as_tuple=True)
        if rows.numel() == 0:  # keep the heads in the graph (DDP): a zero that has a gradient
            zero = hidden[:1, :1].float().sum() * 0.0
            return zero + sum(p.sum() * 0.0 for p in self.trainable_parameters()), 0, 0
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            q = self.q_linear(hidden[rows, positions].float())  # [Q, d]
            k = self.k_linear(hidden.float())  # [B, T, d]
            scores = torch.einsum("qd,qtd->qt", q, k[rows]) / math.sqrt(self.dim)
            spans = batch["spans"][rows]  # [Q, 4]
            t = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
            in_src = (positions >= spans[:, 0]) & (positions < spans[:, 1])
            lo = torch.where(in_src, spans[:, 2], spans[:, 0])[:, None]  # the other language's span
            hi = torch.where(in_src, spans[:, 3], spans[:, 1])[:, None]
            scores = scores.masked_fill(~((t >= lo) & (t < hi)), float("-inf"))
            target = partner[rows, positions]
            loss = F.cross_entropy(scores, target, reduction="sum")
            correct = int((scores.argmax(dim=-1) == target).sum())
        return loss, int(rows.numel()), correct

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.q_linear, self.k_linear) for p in m.parameters()]

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"q_linear": self.q_linear, "k_linear": self.k_linear} if self.config.projection else {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if not self.config.projection:
            return {}
        return {"q_linear": self.q_linear.state_dict(), "k_linear": self.k_linear.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.config.projection:
            super().load_state_dict(state)
            return
        with torch.no_grad():
            self.q_linear.load_state_dict(state["q_linear"])
            self.k_linear.load_state_dict(state["k_linear"])


@hookimpl
def objkit_plugins() -> list[type]:
    return [DenoisingWordAlignment]

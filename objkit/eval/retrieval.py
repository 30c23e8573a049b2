"""Cross-lingual sentence retrieval: encode, pool, nearest neighbour, top-1 accuracy.

The protocol follows XTREME / InfoXLM: sentences are encoded by a frozen encoder, the
hidden states of one intermediate layer are mean-pooled over the non-padding tokens
(``<s>`` and ``</s>`` included), vectors are L2-normalised and each query is matched to
its cosine nearest neighbour. Accuracies are reported in **percent** (0-100), like the
papers.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

from objkit.distributed.device import resolve_device
from objkit.blocks.encoder import find_block_list, truncated_blocks
from objkit.contract.errors import UserError, first_line
from objkit.contract.interfaces import Encoder
from objkit.data.tokenizer import model_max_tokens

Pooling = Literal["mean", "cls"]
POOLINGS: tuple[str, ...] = ("mean", "cls")


def default_layer(num_layers: int) -> int:
    """The layer XTREME/InfoXLM pool for retrieval: 8 of a 12-layer (base) model.

    XTREME's ``--specific_layer 7`` (0-based over the blocks, i.e. ``hidden_states[8]``)
    is about two thirds of the depth; for other depths we keep that ratio:
    ``round(num_layers * 2 / 3)`` clamped to ``[1, num_layers]`` (24 -> 16, 4 -> 3).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if num_layers == 12:
        return 8
    return min(num_layers, max(1, round(num_layers * 2 / 3)))


def check_layer(layer: int, num_layers: int) -> None:
    """Raise :class:`UserError` unless ``0 <= layer <= num_layers`` (0 = embeddings)."""
    if not 0 <= layer <= num_layers:
        raise UserError(
            f"--layer {layer}: out of range, the model has {num_layers} layers "
            f"(0 = embeddings, 1..{num_layers} = blocks)"
        )


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "num_hidden_layers", None)


def _blocks_run(model: nn.Module, layer: int) -> tuple[contextlib.AbstractContextManager[Any], int | None]:
    """(context, blocks that run) for a transformers model: blocks ``1..layer`` only where the
    model has one list of its ``num_hidden_layers`` blocks (:func:`objkit.find_block_list`: BERT,
    XLM-R, DistilBERT, ELECTRA, ...), through :func:`objkit.truncated_blocks`; otherwise the whole
    model (its config's depth, if known)."""
    try:
        path = find_block_list(model)
    except ValueError:
        return contextlib.nullcontext(), _num_layers(model)
    if 1 <= layer < len(model.get_submodule(path)):
        return truncated_blocks(model, layer, path), layer
    return contextlib.nullcontext(), _num_layers(model)


def encode_sentences(
    model: nn.Module,
    tokenizer: Any,
    sentences: list[str],
    *,
    layer: int,
    pooling: Pooling = "mean",
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
    exclude_special: bool = False,
    progress: bool | str = False,
) -> Tensor:
    """Encode ``sentences`` into L2-normalised float32 vectors ``[N, d]`` (on CPU).

    ``model`` is any transformers encoder returning ``.hidden_states`` when called with
    ``output_hidden_states=True``, or any objkit :class:`~objkit.contract.interfaces.Encoder` (through the
    contract: its ``forward(..., up_to_layer=layer)``, ``num_layers``, ``hidden_size``,
    ``max_tokens``); ``layer`` indexes them (0 = embeddings, i = block i).
    ``pooling="mean"`` averages the non-padding positions (specials included unless
    ``exclude_special``; a sentence with no other token keeps its specials); ``"cls"``
    takes position 0. Batches are sorted by length (original order restored), run under
    ``torch.inference_mode()`` in eval mode; the model's training flag is restored. The blocks
    above ``layer`` are skipped: by an objkit encoder's truncated forward, or on a transformers
    model with a list of blocks by :func:`objkit.truncated_blocks`.
    ``max_length`` is clipped to what the model's position table allows.
    ``device=None`` uses the model's own device. ``progress`` (True or a description)
    shows a tqdm bar on stderr.
    """
    if pooling not in POOLINGS:
        raise UserError(f"--pooling {pooling}: expected one of {', '.join(POOLINGS)}")
    if batch_size < 1 or max_length < 2:
        raise UserError("batch_size must be >= 1 and max_length >= 2")
    is_encoder = isinstance(model, Encoder)  # objkit's (periodic eval): its truncated forward
    n_layers = model.num_layers if is_encoder else _num_layers(model)
    if n_layers is not None:
        check_layer(layer, n_layers)
    if device is None:
        param = next(model.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
    n = len(sentences)
    if n == 0:
        hidden = model.hidden_size if is_encoder else getattr(getattr(model, "config", None), "hidden_size", 0)
        return torch.zeros(0, hidden, dtype=torch.float32)
    limit = model.max_tokens if is_encoder else model_max_tokens(model)
    max_length = min(max_length, limit or max_length)

    enc = tokenizer(
        list(sentences),
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_attention_mask=False,
    )
    ids: list[list[int]] = enc["input_ids"]
    special: list[list[int]] = enc["special_tokens_mask"]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    order = sorted(range(n), key=lambda i: len(ids[i]), reverse=True)
    out: Tensor | None = None

    from tqdm.auto import tqdm

    desc = progress if isinstance(progress, str) else "encode"
    bar = tqdm(total=n, desc=desc, unit="sent", file=sys.stderr, disable=not progress)
    was_training = model.training
    model.eval()
    if is_encoder:
        blocks_ctx, n_run = contextlib.nullcontext(), layer
    else:
        blocks_ctx, n_run = _blocks_run(model, layer)
    try:
        with torch.inference_mode(), blocks_ctx:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                width = max(len(ids[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                spec = torch.zeros((len(idx), width), dtype=torch.bool)
                for row, i in enumerate(idx):
                    length = len(ids[i])
                    input_ids[row, :length] = torch.tensor(ids[i], dtype=torch.long)
                    mask[row, :length] = 1
                    spec[row, :length] = torch.tensor(special[i], dtype=torch.bool)
                if is_encoder:
                    states = model(input_ids.to(dev), mask.to(dev), up_to_layer=layer)
                else:
                    states = model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev),
                                   output_hidden_states=True).hidden_states
                if n_run is not None and len(states) != n_run + 1:
                    raise RuntimeError(
                        f"the model returned {len(states)} hidden states after running {n_run} "
                        "blocks (expected embeddings + one per block): were its transformers "
                        "output-capturing hooks installed while some blocks were removed?"
                    )
                if not 0 <= layer < len(states):
                    check_layer(layer, len(states) - 1)
                hidden = states[layer].float()
                if pooling == "cls":
                    vec = hidden[:, 0]
                else:
                    weight = mask.to(dev).bool()
                    if exclude_special:
                        content = weight & ~spec.to(dev)
                        # keep the specials for sentences with no other token (empty lines)
                        weight = torch.where(content.any(1, keepdim=True), content, weight)
                    w = weight.unsqueeze(-1).to(hidden.dtype)
                    vec = (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)
                vec = torch.nn.functional.normalize(vec, dim=-1).cpu()
                if out is None:
                    out = torch.empty(n, vec.shape[1], dtype=torch.float32)
                out[torch.tensor(idx)] = vec
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    assert out is not None
    return out


def top1_accuracy(queries: Tensor, keys: Tensor, chunk_size: int = 4096) -> float:
    """Percent of queries whose nearest key (dot product; inputs normalised => cosine) is
    the key at the same index. Ties go to the lowest index (like ``argmax``). Both sides
    are chunked, so memory is ``chunk_size**2`` similarities whatever N is."""
    if queries.shape[0] != keys.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {keys.shape[0]} keys")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    n = queries.shape[0]
    if n == 0:
        return 0.0
    keys = keys.to(queries.device, torch.float32)
    correct = 0
    for q0 in range(0, n, chunk_size):
        q = queries[q0 : q0 + chunk_size].float()
        best = torch.full((q.shape[0],), float("-inf"), device=q.device)
        arg = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        for k0 in range(0, n, chunk_size):
            sims = q @ keys[k0 : k0 + chunk_size].T
            val, pos = sims.max(dim=1)
            better = val > best  # strict: an earlier chunk keeps its tie
            best = torch.where(better, val, best)
            arg = torch.where(better, pos + k0, arg)
        target = torch.arange(q0, q0 + q.shape[0], device=q.device)
        correct += int((arg == target).sum())
    return 100.0 * correct / n


def retrieval_scores(src_emb: Tensor, tgt_emb: Tensor, chunk_size: int = 4096) -> dict[str, float]:
    """Top-1 accuracy in percent both ways: ``src2tgt``, ``tgt2src`` and their ``mean``."""
    s2t = top1_accuracy(src_emb, tgt_emb, chunk_size)
    t2s = top1_accuracy(tgt_emb, src_emb, chunk_size)
    return {"src2tgt": s2t, "tgt2src": t2s, "mean": (s2t + t2s) / 2}


def evaluate_pair(
    model: nn.Module,
    tokenizer: Any,
    src_lines: list[str],
    tgt_lines: list[str],
    *,
    layer: int,
    pooling: Pooling = "mean",
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Encode two aligned lists and score retrieval: scores (percent), ``n``, layer, pooling."""
    if len(src_lines) != len(tgt_lines):
        raise UserError(f"{len(src_lines)} source lines but {len(tgt_lines)} target lines")
    if not src_lines:
        raise UserError("no sentence pairs to evaluate")
    kw: dict[str, Any] = dict(
        layer=layer, pooling=pooling, batch_size=batch_size, max_length=max_length, device=device
    )
    src = encode_sentences(model, tokenizer, src_lines, progress=progress and "src", **kw)
    tgt = encode_sentences(model, tokenizer, tgt_lines, progress=progress and "tgt", **kw)
    return {**retrieval_scores(src, tgt), "n": len(src_lines), "layer": layer, "pooling": pooling}


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 file without their newline (``\\n`` only; empty lines kept)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, expected a text file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_aligned(src: str | Path, tgt: str | Path) -> tuple[list[str], list[str]]:
    """Read two line-aligned files; UserError when their line counts differ or a line is blank
    (a blank "sentence" would be scored like any other)."""
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        raise UserError(f"line counts differ: {src} has {len(a)} lines, {tgt} has {len(b)}")
    for path, lines in ((src, a), (tgt, b)):
        blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
        if blank is not None:
            raise UserError(f"{path}: line {blank + 1} is blank (expected one sentence a line, line-aligned)")
    return a, b


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off while loading (an unused MLM head, a fresh
    pooler or classifier are expected here), restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_model_dir(model_dir: str | Path) -> None:
    """A ``model_dir`` that exists must be a transformers model directory (one line otherwise);
    one that does not exist is taken as a hub id."""
    path = Path(model_dir)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{model_dir}: not a directory (expected a transformers model directory)")
        if not (path / "config.json").is_file():
            raise UserError(f"{model_dir}: not a transformers model directory (no config.json)")


def model_load_error(model_dir: str | Path, err: BaseException) -> UserError:
    where = "model directory" if Path(model_dir).exists() else "local directory or reachable hub id"
    return UserError(f"{model_dir}: cannot load a model from this {where} ({first_line(err)})")


def tokenizer_load_error(model_dir: str | Path, err: BaseException) -> UserError:
    return UserError(f"{model_dir}: no usable tokenizer (expected tokenizer.json or "
                     f"sentencepiece.bpe.model saved next to the model; {first_line(err)})")


def check_encoder_config(model_dir: str | Path, config: Any) -> None:
    if not hasattr(config, "num_hidden_layers"):
        raise UserError(f"{model_dir}: the model config has no num_hidden_layers (not an encoder?)")


def load_encoder(model_dir: str | Path, device: str | torch.device | None = "auto") -> tuple[nn.Module, Any]:
    """``AutoModel`` + ``AutoTokenizer`` from a local directory (or a hub id), in eval mode
    on ``device``. Problems raise a one-line :class:`UserError` naming the directory."""
    from transformers import AutoModel, AutoTokenizer

    dev = resolve_device(device)
    check_model_dir(model_dir)
    with quiet_transformers():
        try:
            model = AutoModel.from_pretrained(str(model_dir))
        except (OSError, ValueError, KeyError) as err:
            raise model_load_error(model_dir, err) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise tokenizer_load_error(model_dir, err) from None
    check_encoder_config(model_dir, model.config)
    return model.to(dev).eval(), tokenizer

"""train.activation_checkpointing, train.lm_head_chunk_rows and train.compile: the same losses and
weights as without them (to float tolerance), the LM head's memory bounded by its chunk, the
export unchanged, and one line (exit 2) where torch.compile has no backend."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from objkit import EncoderRunOptions, PresetEncoderConfig
from objkit.contract.errors import UserError
from objkit.blocks.lm_head import lm_head_loss
from objkit.train.memory import GradIntoEmbedding, set_embedding_grad_in_place
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.trainer import Trainer
from objkit_plugins.xlmr import XLMREncoder, architecture
from tiny_recipes import tiny_recipe

# MLM + TLM + XLCO (truncated at layer 1 of 2, queue and in-batch negatives); dropout on, so the
# checkpointed recomputation must replay the same dropout masks
RECIPE = tiny_recipe("memory", dropout=0.1) + """
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[objectives.xlco]
data = "parallel"
layer = 1
pooling = "mean"
normalize = true
temperature = 0.1
negatives = { momentum_queue = { size = 16, fill_before_start = false }, in_batch = {} }
[train]
steps = 100
batch_size = 8
micro_batch_size = 4
lr = 3e-3
seed = 5
log_every = 1000
checkpoint_every = 1000
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "memory.toml"
    path.write_text(RECIPE)
    return path


def _train(recipe_path: Path, run_dir: Path, steps: int, *overrides: str) -> tuple[list[dict[str, float]], Trainer]:
    trainer = Trainer(load_recipe(recipe_path, list(overrides)), run_dir, default_registry(), progress=False)
    losses = []
    for _ in range(steps):
        stats = trainer.train_step()
        losses.append({k: float(v) / stats.units[k] for k, v in stats.sums.items() if k.endswith("/loss")})
    return losses, trainer


def _assert_same_run(a: tuple[list[dict[str, float]], Trainer], b: tuple[list[dict[str, float]], Trainer],
                     rel: float = 1e-5) -> None:
    (losses_a, ta), (losses_b, tb) = a, b
    assert [sorted(x) for x in losses_a] == [sorted(x) for x in losses_b]
    assert "xlco/loss" in losses_a[-1]
    for step_a, step_b in zip(losses_a, losses_b, strict=True):
        for key in step_a:
            assert step_b[key] == pytest.approx(step_a[key], rel=rel, abs=rel / 10), key
    for (name, pa), (_, pb) in zip(ta.encoder.named_parameters(), tb.encoder.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=10 * rel, atol=rel, msg=name)


@pytest.mark.parametrize("backward", ["per_objective", "joint"])
def test_activation_checkpointing_and_chunked_head_keep_losses_and_weights(recipe_path, tmp_path, backward):
    """Also with one backward over MLM and TLM together (two heads adding into the tied
    weight's ``.grad`` in the same graph)."""
    plain = _train(recipe_path, tmp_path / "plain", 3, f"train.backward={backward}")
    memory = _train(recipe_path, tmp_path / "memory", 3, "train.activation_checkpointing=true",
                    "train.lm_head_chunk_rows=5", f"train.backward={backward}")
    _assert_same_run(plain, memory)
    blocks = memory[1].encoder.body().encoder.layer
    assert all(block.gradient_checkpointing for block in blocks)
    # the run's options reach the encoder declared, at build (EncoderContext.options -> run_options)
    assert memory[1].encoder.run_options == EncoderRunOptions(
        activation_checkpointing=frozenset({"mlm", "tlm", "xlco"}), lm_head_chunk_rows=5,
        lm_head_grad_in_place=True, embedding_grad_in_place=True)  # one process: both gradients into .grad
    assert plain[1].encoder.run_options == EncoderRunOptions(lm_head_grad_in_place=True, embedding_grad_in_place=True)
    # ... and so do the embeddings' (every run on one process, plain included)
    assert type(memory[1].encoder.mlm.get_input_embeddings()) is GradIntoEmbedding
    # the export is the same model: same config, same tensor names
    plain[1].export(), memory[1].export()
    config_a = json.loads((tmp_path / "plain" / "export" / "config.json").read_text())
    config_b = json.loads((tmp_path / "memory" / "export" / "config.json").read_text())
    assert config_a == config_b
    weights_a = load_file(str(tmp_path / "plain" / "export" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "memory" / "export" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()


def test_checkpointing_a_list_of_objectives_switches_per_objective(recipe_path, tmp_path):
    seen: dict[str, list[bool]] = {}
    plain = _train(recipe_path, tmp_path / "plain", 2)
    trainer = Trainer(load_recipe(recipe_path, ["train.activation_checkpointing=['mlm', 'xlco']"]), tmp_path / "some",
                      default_registry(), progress=False)
    block = trainer.encoder.body().encoder.layer[0]
    for built in trainer.objectives:
        original = built.objective.compute

        def spy(batch, ctx, name=built.name, original=original):
            seen.setdefault(name, []).append(bool(block.gradient_checkpointing))
            return original(batch, ctx)

        built.objective.compute = spy
    losses = []
    for _ in range(2):
        stats = trainer.train_step()
        losses.append({k: float(v) / stats.units[k] for k, v in stats.sums.items() if k.endswith("/loss")})
    assert seen == {"mlm": [True] * 4, "tlm": [False] * 4, "xlco": [True] * 4}
    _assert_same_run(plain, (losses, trainer))


def test_activation_checkpointing_names_objectives_of_the_recipe(recipe_path):
    with pytest.raises(UserError, match=r"train.activation_checkpointing: 'tml' is not an objective of this recipe; "
                                        r'did you mean "tlm"\?'):
        load_recipe(recipe_path, ["train.activation_checkpointing=['tml']"])
    with pytest.raises(UserError, match=r"train.lm_head_chunk_rows: Input should be greater than or equal to 0"):
        load_recipe(recipe_path, ["train.lm_head_chunk_rows=-1"])


def _tiny_encoder(vocab: int = 300) -> XLMREncoder:
    torch.manual_seed(0)
    config = PresetEncoderConfig(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32, max_length=16,
                         tokenizer="unused")
    return XLMREncoder.from_hf_config(architecture(config, vocab))


class _Ops(TorchDispatchMode):
    """The ops run while active (``names``) and the shapes of the tensors they make (``shapes``)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("fused", [True, False], ids=["lm_head_parts", "checkpointed_chunks"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_head_equals_the_whole_head_and_saves_no_logits(reduction, fused):
    """Both chunked paths -- one autograd function over the head's parts (an encoder with
    ``lm_head_parts``) and a checkpoint per chunk (one without) -- give the whole head's loss,
    hits and gradients (the hidden rows', the transform's, the tied decoder's and its bias), and
    keep no logits for the backward (rows with ``ignore_index`` count nothing)."""
    encoder = _tiny_encoder()
    if not fused:
        encoder.lm_head_parts = lambda: None
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 300, (23,))
    targets[5] = -100
    results, grads, shapes = {}, {}, {}
    for chunk in (0, 4):
        encoder.zero_grad()
        hidden.grad = None
        saved: list[tuple[int, ...]] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _Ops() as made:
            out = lm_head_loss(encoder, hidden, targets, reduction=reduction, chunk_rows=chunk)
            out.loss.backward()
        if chunk:  # every tensor made, forward and backward, within chunk × vocab (but the d-wide ones)
            assert max(math.prod(shape) for shape in made.shapes if 16 not in shape) <= chunk * 300
        results[chunk] = out
        shapes[chunk] = saved
        grads[chunk] = [hidden.grad.clone()] + [p.grad.clone() for p in encoder.mlm.lm_head.parameters()]
    whole, chunked = results[0], results[4]
    torch.testing.assert_close(chunked.loss, whole.loss, rtol=1e-5, atol=1e-6)
    assert int(chunked.correct) == int(whole.correct) and chunked.rows == whole.rows == 23
    for a, b in zip(grads[0], grads[4], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # the whole head keeps [23, 300] logits for its backward; the chunked ones no [k, vocab] tensor
    assert (23, 300) in shapes[0]
    assert not [shape for shape in shapes[4] if len(shape) == 2 and shape[-1] == 300]


@pytest.mark.parametrize("chunk_rows", [5, 0], ids=["fused_chunked_head", "whole_head"])
def test_decoder_gradient_in_place_equals_autograds_and_is_in_grad_before_the_embedding_backward(chunk_rows):
    """With ``lm_head_grad_in_place`` the head (fused chunked, or in one piece) adds the tied decoder's gradient into
    ``.grad`` during its own backward (autograd gets none for it), so no decoder-sized buffer
    waits through the encoder backward: ``.grad`` already holds it when the backward reaches the
    embeddings. Every parameter's gradient equals autograd's path, over two accumulated
    backward passes (the second adds to an existing ``.grad``)."""
    encoder = _tiny_encoder()
    weight = encoder.mlm.lm_head.decoder.weight
    assert weight is encoder.mlm.get_input_embeddings().weight  # tied
    ids = torch.randint(3, 300, (4, 9))
    mask = torch.ones_like(ids)
    targets = torch.randint(0, 300, (36,))
    grads, seen = {}, {}
    encoder.eval()  # no dropout: both passes see the same function
    words = encoder.mlm.get_input_embeddings()
    for in_place in (False, True):
        encoder.zero_grad(set_to_none=True)
        encoder.run_options = EncoderRunOptions(lm_head_grad_in_place=in_place)
        seen[in_place] = []
        def watch(module, args, output, flag=in_place):  # their output's gradient is ready: their backward is next
            output.register_hook(lambda grad: seen[flag].append(weight.grad is not None))

        handle = words.register_forward_hook(watch)
        for _ in range(2):
            hidden = encoder(ids, mask)[-1]
            lm_head_loss(encoder, hidden.reshape(36, -1), targets, chunk_rows=chunk_rows).loss.backward()
        handle.remove()
        grads[in_place] = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-6, msg=name)
    # first backward: autograd's path has no .grad yet when the embeddings' backward starts
    assert seen[False] == [False, True] and seen[True] == [True, True]


@pytest.mark.parametrize("chunk_rows", [0, 5], ids=["whole_head", "fused_chunked_head"])
def test_embedding_gradients_into_grad_equal_autograds_and_make_no_vocab_sized_tensor(chunk_rows):
    """:class:`GradIntoEmbedding` (one process): every parameter's gradient equals autograd's
    path over two accumulated backward passes, padding positions included (the lookup gives the
    padding row none, as ``F.embedding`` does), and the backward never makes the dense ``vocab × d``
    gradient of the lookup (``embedding_dense_backward``)."""
    encoder = _tiny_encoder()
    encoder.eval()
    encoder.run_options = EncoderRunOptions(lm_head_grad_in_place=True)
    words = encoder.mlm.get_input_embeddings()
    pad = words.padding_idx
    assert pad is not None
    ids = torch.randint(3, 300, (4, 9))
    ids[1, 6:] = pad
    mask = (ids != pad).long()
    targets = torch.randint(0, 300, (36,))
    grads, calls = {}, {}
    for in_place in (False, True):
        assert set_embedding_grad_in_place(encoder, in_place) == (3 if in_place else 0)  # words, positions, types
        encoder.zero_grad(set_to_none=True)
        calls[in_place] = _Ops()
        for _ in range(2):
            hidden = encoder(ids, mask)[-1]
            loss = lm_head_loss(encoder, hidden.reshape(36, -1), targets, chunk_rows=chunk_rows).loss
            with calls[in_place]:
                loss.backward()
        grads[in_place] = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    assert type(words) is GradIntoEmbedding
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-6, msg=name)
    assert "embedding_dense_backward.default" in calls[False].names
    assert "embedding_dense_backward.default" not in calls[True].names
    # without gradients, or switched back, the table is a plain lookup
    with torch.no_grad():
        torch.testing.assert_close(words(ids), torch.nn.functional.embedding(ids, words.weight, pad))
    set_embedding_grad_in_place(encoder, False)
    assert type(words) is torch.nn.Embedding


def test_fused_chunked_head_follows_autocast_like_the_checkpointed_one():
    """Under autocast (bf16 on CPU here; CUDA the same way) the fused head's logit matmuls run in
    the autocast dtype in the forward and again in the backward, as the checkpointed chunks'
    do: equal losses and gradients to bf16 tolerance."""
    encoder = _tiny_encoder()
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 300, (23,))
    grads = {}
    for fused in (True, False):
        encoder.zero_grad()
        hidden.grad = None
        encoder.lm_head_parts = type(encoder).lm_head_parts.__get__(encoder) if fused else (lambda: None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lm_head_loss(encoder, hidden, targets, chunk_rows=4)
        out.loss.backward()
        grads[fused] = [out.loss.detach(), hidden.grad.clone(), encoder.mlm.lm_head.decoder.weight.grad.clone()]
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_chunked_head_without_gradients_and_the_encoder_default():
    encoder = _tiny_encoder()
    hidden, targets = torch.randn(10, 16), torch.randint(0, 300, (10,))
    whole = lm_head_loss(encoder, hidden, targets)
    encoder.run_options = replace(encoder.run_options, lm_head_chunk_rows=3)  # what train.lm_head_chunk_rows gives
    with torch.no_grad():
        chunked = lm_head_loss(encoder, hidden, targets)
    torch.testing.assert_close(chunked.loss, whole.loss.detach(), rtol=1e-5, atol=1e-6)
    assert chunked.accuracy == whole.accuracy


@pytest.fixture
def inductor_in_process(monkeypatch):
    """Inductor compiles in this process: its pool of compile workers (one per core, started on
    the first compile) would outlive the test, which conftest reports as leftover processes."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 1)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(recipe_path, tmp_path, inductor_in_process):
    """Two steps of MLM + TLM + XLCO with compiled blocks (the key encoder's too): the losses of
    eager mode, and checkpoint tensor names without ``_orig_mod.``."""
    overrides = ["model.dropout=0.0", "train.batch_size=4", "train.micro_batch_size=4"]
    eager = _train(recipe_path, tmp_path / "eager", 2, *overrides)
    compiled = _train(recipe_path, tmp_path / "compiled", 2, *overrides, "train.compile=true")
    _assert_same_run(eager, compiled, rel=1e-4)  # inductor's kernels round differently
    key_blocks = next(b.objective for b in compiled[1].objectives if b.name == "xlco").key_body.encoder.layer
    assert all(getattr(block, "_objkit_compiled", False) for block in key_blocks)
    names = list(load_file(str(compiled[1].save() / "model.safetensors")))
    assert names and not any("_orig_mod" in name for name in names)
    assert sorted(names) == sorted(load_file(str(eager[1].save() / "model.safetensors")))  # tied weights once


@pytest.mark.slow
def test_compile_without_a_backend_is_one_line(tmp_path):
    """No C++ compiler for inductor's CPU kernels: train.compile fails before training, in one line."""
    code = ("import torch\nfrom objkit.train.memory import check_compile_backend\n"
            "check_compile_backend(torch.device('cpu'))\n")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    script = f"from objkit.contract.errors import UserError\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines()) + (
        "except UserError as exc:\n    print(exc)\n    raise SystemExit(2)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stdout.strip()
    assert "\n" not in line
    assert line.startswith("train.compile: torch.compile cannot build kernels on cpu here (")
    assert "set train.compile = false" in line


def test_dry_run_reports_memory_with_and_without_the_options():
    from objkit.train.plan import activation_elements, plan_with_memory
    from objkit.train.plan import ModelShape

    root = Path(__file__).resolve().parents[1]
    resolved = load_recipe(root / "recipes" / "infoxlm_large.toml", ["train.lm_head_chunk_rows=128"])
    rows, estimates = plan_with_memory(resolved, default_registry(), world_size=1)
    shown = dict(rows)
    assert "memory: with checkpointing + chunked head" in shown and "memory: without checkpointing or chunked head" in shown
    run, plain, lean = estimates["run"], estimates["plain"], estimates["lean"]
    assert run.chunk_rows == 128 and not run.checkpointing and lean.checkpointing
    assert run.lm_head == lean.lm_head < plain.lm_head  # chunks of 128 of 1,229 masked rows
    assert lean.activations < plain.activations / 5 and lean.total < plain.total
    assert run.static == plain.static  # weights, gradients, AdamW and the key encoder + queue do not change
    # the count: embeddings s·b·h, then 8·s·b·h + 2·s·b·f + s²·b per block (1 block of 4 tokens here)
    shape = ModelShape(layers=1, hidden=2, heads=1, ffn=8, vocab=10)
    assert activation_elements(shape, batch=1, length=4, checkpointing=False) == 8 + (8 * 8 + 2 * 32 + 16)


def test_cpu_runs_return_freed_host_memory_and_the_environment_can_turn_it_off(monkeypatch):
    """On a CPU run (glibc) allocations from 1 MiB are mmap'd, so freed activations go back to the
    system; ``OBJKIT_MMAP_THRESHOLD`` sets the threshold, 0 leaves glibc's own; other devices
    are left alone."""
    import ctypes.util

    import torch

    from objkit.distributed.device import HOST_MMAP_THRESHOLD, return_freed_host_memory

    if ctypes.util.find_library("c") is None or not hasattr(ctypes.CDLL("libc.so.6"), "mallopt"):
        pytest.skip("not glibc")
    assert return_freed_host_memory(torch.device("meta")) is None
    monkeypatch.setenv("OBJKIT_MMAP_THRESHOLD", "0")
    assert return_freed_host_memory(torch.device("cpu")) is None
    monkeypatch.setenv("OBJKIT_MMAP_THRESHOLD", str(4 << 20))
    assert return_freed_host_memory(torch.device("cpu")) == 4 << 20
    monkeypatch.delenv("OBJKIT_MMAP_THRESHOLD")
    assert return_freed_host_memory(torch.device("cpu")) == HOST_MMAP_THRESHOLD


def test_dry_run_counts_the_tied_gradient_copies_of_the_backward():
    """Three copies of the word-embedding gradient (the decoder's, the lookup's, their sum) with
    the head in one piece or checkpointed chunks; two chunked through lm_head_parts (one buffer
    that takes the lookup's in place), one where that buffer is .grad (DDP, chunked or whole
    head), none where the lookup adds into .grad too (one process); with the lookup into .grad
    and autograd's decoder gradient, one (whole head) or two (checkpointed chunks); in the total."""
    from objkit.train.plan import ModelShape, estimate_memory

    shape = ModelShape(layers=2, hidden=64, heads=2, ffn=128, vocab=1000)
    static = {"weights": 10}

    def copies(chunk_rows: int, **head: bool) -> int:
        estimate = estimate_memory(shape, 8, 128, "fp32", static, checkpointing=True, chunk_rows=chunk_rows, **head)
        assert estimate.tied_gradient % (4 * 1000 * 64) == 0
        return estimate.tied_gradient // (4 * 1000 * 64)

    one_process = {"grad_in_place": True, "embedding_grad_in_place": True}
    ddp = {"grad_in_place": True, "embedding_grad_in_place": False}
    fsdp = {"grad_in_place": False, "embedding_grad_in_place": False}
    assert [copies(16, **one_process), copies(16, **ddp), copies(16, **fsdp)] == [0, 1, 2]
    assert [copies(16, fused_head=False, **fsdp), copies(0, fused_head=False, **fsdp)] == [3, 3]
    assert [copies(16, fused_head=False, **one_process), copies(0, fused_head=False, **one_process)] == [2, 1]
    # the head in one piece through lm_head_parts: its decoder gradient goes into .grad too
    assert [copies(0, **one_process), copies(0, **ddp), copies(0, **fsdp)] == [0, 1, 3]
    chunked = estimate_memory(shape, 8, 128, "fp32", static, checkpointing=True, chunk_rows=16, fused_head=False)
    assert chunked.total == 10 + chunked.activations + chunked.lm_head + chunked.tied_gradient


def test_run_options_are_declared_at_build_and_an_encoder_that_drops_one_is_refused(recipe_path):
    """The run's options reach the encoder in ``EncoderContext.options`` (kept as ``run_options``);
    the in-place gradients follow the parallel layout; an encoder written before API 1.6, whose
    ``build`` ignores ``ctx.options``, is given them; one that dropped an option the recipe sets
    is refused in one line naming the key."""
    from objkit.train.build import build_encoder
    from objkit.distributed import ParallelStrategy
    from objkit.contract.interfaces import WorldInfo
    from objkit.train.memory import apply_train_options, encoder_run_options
    from objkit.contract.registry import Registry

    resolved = load_recipe(recipe_path, ["train.lm_head_chunk_rows=7", "train.activation_checkpointing=['mlm']"])
    train = resolved.recipe.train
    options = encoder_run_options(train, ["mlm", "tlm"], 1, "fp32")
    assert options == EncoderRunOptions(activation_checkpointing=frozenset({"mlm"}), lm_head_chunk_rows=7,
                                        lm_head_grad_in_place=True, embedding_grad_in_place=True)
    ddp = encoder_run_options(train, ["mlm"], 2)
    assert ddp.lm_head_grad_in_place and not ddp.embedding_grad_in_place
    fsdp = encoder_run_options(load_recipe(recipe_path, ["train.parallelism=fsdp"]).recipe.train, ["mlm"], 2)
    assert not fsdp.lm_head_grad_in_place and not fsdp.embedding_grad_in_place

    encoder = build_encoder(resolved, default_registry(), vocab_size=300, options=options)
    assert encoder.run_options is options

    class Older(XLMREncoder):  # build() as written to API 1.5: ctx.options unknown to it
        @classmethod
        def build(cls, config, ctx=None):
            return cls.from_hf_config(architecture(config, ctx.vocab_size))

    registry = Registry.from_entry_points()
    registry._plugins.pop("xlmr")
    registry.add(Older, distribution="<test>", version="")
    older = build_encoder(resolved, registry, vocab_size=300, options=options)
    assert type(older) is Older and older.run_options is options

    from types import SimpleNamespace

    objectives = [SimpleNamespace(instance_name="mlm"), SimpleNamespace(instance_name="tlm")]
    strategy = ParallelStrategy(encoder, [], WorldInfo())
    encoder.run_options = replace(options, lm_head_chunk_rows=0)
    with pytest.raises(UserError, match=r"^train.lm_head_chunk_rows: encoder 'xlmr' does not honour it"):
        apply_train_options(encoder, strategy, objectives, train, torch.device("cpu"))
    encoder.run_options = replace(options, embedding_grad_in_place=False)  # may be kept off: memory only
    hooks = apply_train_options(encoder, strategy, objectives, train, torch.device("cpu"))
    assert type(encoder.mlm.get_input_embeddings()) is torch.nn.Embedding
    assert all(block.gradient_checkpointing for block in encoder.body().encoder.layer)
    # only mlm recomputes: a step hook switches it off at the step's before_compute point of tlm's pass
    from objkit.train.step import StepPoint, StepState

    [hook] = hooks
    assert hook.points == {StepPoint.BEFORE_COMPUTE}
    hook.at(StepPoint.BEFORE_COMPUTE, StepState(ctx=None, objective=objectives[1]))  # type: ignore[arg-type]
    assert not any(block.gradient_checkpointing for block in encoder.body().encoder.layer)
    hook.at(StepPoint.BEFORE_COMPUTE, StepState(ctx=None, objective=objectives[0]))  # type: ignore[arg-type]
    assert all(block.gradient_checkpointing for block in encoder.body().encoder.layer)

"""The public plugin API (docs/plugin-api.md section 3): what ``objkit`` exports, and that the
built-in plugins and the example distribution use nothing else from objkit.

The built-ins are written the way a third party would write them: any ``objkit.xxx`` submodule
they import would be a name a third-party plugin cannot rely on, so this test parses their
modules (``ast``, nothing is imported) and fails on any such import. ``objkit.testing`` (the
conformance kit) is public too but belongs in tests, not in plugin modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import objkit
import objkit.eval
from objkit.contract.hookspecs import PLUGIN_API_VERSION, api_compatible

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_MODULES = sorted((ROOT / "plugins").glob("*.py"))
EXAMPLE_MODULES = sorted((ROOT / "examples" / "objkit-translation-ranking" / "objkit_translation_ranking").glob("*.py"))
PUBLIC_MODULES = {"objkit": objkit.__all__, "objkit.eval": objkit.eval.__all__}  # a plugin module imports from here only

NEW_IN_1_1 = [
    "SAMPLE_SEED", "derive_seed", "example_seeds", "sample_generator", "sample_uniform",
    "ConstantMomentum", "LinearMomentum", "ExponentialMomentum", "ConstantWithRefresh", "MomentumSchedule",
    "MomentumTracker", "coerce_schedule", "make_momentum_copy",
    "ContrastiveResult", "info_nce",
    "AllGather", "dist_all_gather", "gather_rows",
    "masked_lm_output", "masked_units", "pack_sentences",
]  # fmt: skip
NEW_IN_1_2 = ["LMHeadLoss", "lm_head_loss"]
NEW_IN_1_3 = ["length_groups", "padding_counts", "side_lengths"]
NEW_IN_1_6 = ["EncoderRunOptions", "MaskedLMEncoder", "PresetEncoderConfig", "PRESETS", "preset_dims",
              "find_block_list", "truncated_blocks", "run_truncated",  # what the encoder plugins are written on
              "EvalContext", "Evaluator"]  # and objkit.eval's building blocks (a public module of its own)
NEW_IN_1_6_SOURCES = ["Source", "SourceConfig", "SourceContext", "TextFilePart", "AlignedFilesPart", "BitextFilePart",
              "RowsPart", "hub_unreachable_reason"]  # the source plugin kind


def objkit_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, what)`` for every import of an objkit module other than ``objkit`` itself and
    ``objkit.eval`` (the evaluators' building blocks), and every ``from objkit import NAME`` /
    ``from objkit.eval import NAME`` whose NAME is not in that module's ``__all__``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("objkit."):
                    bad.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top != "objkit":
                continue
            if node.module not in PUBLIC_MODULES:
                bad.append((node.lineno, f"from {node.module} import ..."))
                continue
            for alias in node.names:
                if alias.name not in PUBLIC_MODULES[node.module]:
                    bad.append((node.lineno, f"from {node.module} import {alias.name} (not in {node.module}.__all__)"))
    return bad


def test_there_are_modules_to_check():
    names = {p.stem for p in PLUGIN_MODULES}
    assert {"mlm", "tlm", "xlco", "xlm_align", "xlm_e", "momentum_queue", "in_batch", "mixup", "adamw", "schedules"} <= names
    assert {"xlmr", "bert", "hf_mlm"} <= names  # the encoders too (issue 27)
    assert {"retrieval", "tatoeba", "transfer", "align"} <= names  # the evaluators (plugin API 1.6)
    assert {"source_text", "source_parallel", "source_cldr", "source_hf"} <= names  # the sources (1.6)
    assert {"objective.py", "mining.py", "moses.py"} <= {p.name for p in EXAMPLE_MODULES}


@pytest.mark.parametrize("path", PLUGIN_MODULES + EXAMPLE_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_plugin_modules_import_only_public_names(path: Path):
    bad = objkit_imports(path)
    assert not bad, f"{path.relative_to(ROOT)} imports private objkit names: " + "; ".join(
        f"line {line}: {what}" for line, what in bad
    )


def test_the_checker_catches_private_imports(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text(
        "import objkit\nfrom objkit import hookimpl\nfrom objkit.blocks.seeding import derive_seed\n"
        "import objkit.blocks.momentum\nfrom objkit import registry\n"
        "def f():\n    from objkit.blocks.encoder import run_body\n"
        "from objkit.eval import encode_sentences\nfrom objkit.eval import load_task\n",
        encoding="utf-8",
    )
    found = sorted(what for _, what in objkit_imports(module))
    assert found == sorted([
        "from objkit.blocks.seeding import ...",
        "import objkit.blocks.momentum",
        "from objkit import registry (not in objkit.__all__)",
        "from objkit.blocks.encoder import ...",
        "from objkit.eval import load_task (not in objkit.eval.__all__)",
    ])  # fmt: skip


def test_every_public_name_resolves_and_the_new_ones_are_exported():
    assert set(NEW_IN_1_1 + NEW_IN_1_2 + NEW_IN_1_3 + NEW_IN_1_6 + NEW_IN_1_6_SOURCES) <= set(objkit.__all__)
    for name in objkit.__all__:
        assert getattr(objkit, name) is not None, name
    for name in objkit.eval.__all__:
        assert getattr(objkit.eval, name) is not None, name
    assert set(objkit.__all__) <= set(dir(objkit))


def test_importing_objkit_stays_cheap():
    code = "import sys, objkit; assert 'torch' not in sys.modules, 'objkit imported torch'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_minor_bump_keeps_1_0_plugins_loading():
    assert PLUGIN_API_VERSION == "1.7"
    assert api_compatible("1.0") and api_compatible("1.1") and api_compatible("1.2") and api_compatible("1.3")
    assert api_compatible("1.4") and api_compatible("1.5") and api_compatible("1.6") and api_compatible("1.7")
    assert not api_compatible("1.8") and not api_compatible("2.0")


def test_gather_rows_detached_or_through_the_local_shard():
    from objkit import gather_rows

    local = torch.randn(3, 4, requires_grad=True)
    other = torch.randn(2, 4)

    def fake(tensor: torch.Tensor) -> list[torch.Tensor]:  # this is rank 1 of 2; rank 0 holds 2 rows
        if tensor.dtype == torch.long:
            return [torch.tensor([2]), tensor]
        padded = tensor.new_zeros(tensor.shape)
        padded[:2] = other
        return [padded, tensor]

    rows, sizes = gather_rows(local, fake)
    assert sizes == [2, 3] and rows.shape == (5, 4) and not rows.requires_grad
    torch.testing.assert_close(rows[:2], other)
    torch.testing.assert_close(rows[2:], local.detach())
    rows, _ = gather_rows(local, fake, rank=1)
    rows.sum().backward()
    assert torch.equal(local.grad, torch.ones(3, 4))


def test_encoder_copy_body_runs_like_the_encoder_up_to_a_layer():
    from transformers import XLMRobertaConfig

    from objkit import MomentumTracker
    from objkit_plugins.xlmr import XLMREncoder

    torch.manual_seed(0)
    cfg = XLMRobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, pad_token_id=1, type_vocab_size=1,
    )  # fmt: skip
    encoder = XLMREncoder.from_hf_config(cfg).eval()
    copy = encoder.copy_body(2)
    assert not any(p.requires_grad for p in copy.parameters())
    assert all(p.dtype == torch.float32 for p in copy.parameters())
    assert len(encoder.body().encoder.layer) == 4  # the encoder keeps all its blocks
    MomentumTracker.between(encoder.body(), copy)  # parameter names pair up
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = encoder(ids, mask, up_to_layer=2)
        got = encoder.run_copy(copy.eval(), ids, mask, up_to_layer=2)
    assert len(got) == 3
    torch.testing.assert_close(got[2], want[2])


def test_every_builtin_plugin_is_registered_from_objkit_plugins():
    """Every built-in encoder (and objective, store, augmentation) comes from a module of plugins/
    (``objkit_plugins``), registered through the ``objkit`` entry points like a third party's."""
    from importlib.metadata import distribution

    points = {ep.name: ep.value for ep in distribution("objkit").entry_points if ep.group == "objkit"}
    for name in ("xlmr", "bert", "hf_mlm"):
        assert points[name] == f"objkit_plugins.{name}", (name, points[name])
    from objkit.contract.registry import Registry

    registry = Registry.from_entry_points()
    for name in ("xlmr", "bert", "hf_mlm"):
        assert registry.get(name, kind="encoder").cls.__module__ == f"objkit_plugins.{name}"


def test_the_moved_encoder_names_keep_working_with_a_deprecation_warning():
    import objkit.bert
    import objkit.blocks.encoder
    from objkit_plugins.bert import BertEncoder
    from objkit_plugins.xlmr import XLMREncoder, architecture

    with pytest.warns(DeprecationWarning, match=r"objkit.blocks.encoder.XLMREncoder moved to objkit_plugins.xlmr"):
        assert objkit.blocks.encoder.XLMREncoder is XLMREncoder
    with pytest.warns(DeprecationWarning):
        assert objkit.blocks.encoder.architecture is architecture
    with pytest.warns(DeprecationWarning, match=r"objkit.bert.BertEncoder moved to objkit_plugins.bert"):
        assert objkit.bert.BertEncoder is BertEncoder
    with pytest.raises(AttributeError):
        objkit.blocks.encoder.NoSuchName  # noqa: B018


def test_the_core_encoder_module_knows_no_model_family():
    """objkit/blocks/encoder.py keeps the generic pieces: no transformers class of a family is imported there."""
    tree = ast.parse((ROOT / "objkit" / "blocks" / "encoder.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("transformers") for alias in node.names}
    assert imported and not {n for n in imported if n.startswith(("XLMRoberta", "Bert", "DistilBert", "Electra"))}

"""Old module paths (before objkit/ was split into layers in 0.8.0) keep importing for one
deprecation period: ``import objkit.trainer`` gives :mod:`objkit.train.trainer` with a
``DeprecationWarning`` naming the new path; they go in objkit 1.0 (docs/plugin-api.md,
"Deprecated names"). Generated with the move; MOVED is the one table old -> new."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED = {
    'objkit._ranks': 'objkit.testing._ranks',
    'objkit.build': 'objkit.train.build',
    'objkit.checkpoint': 'objkit.train.checkpoint',
    'objkit.contrastive': 'objkit.blocks.contrastive',
    'objkit.device': 'objkit.distributed.device',
    'objkit.docgen': 'objkit.recipe.docgen',
    'objkit.encoder': 'objkit.blocks.encoder',
    'objkit.encoder_contract': 'objkit.contract.encoder',
    'objkit.errors': 'objkit.contract.errors',
    'objkit.evaluator': 'objkit.contract.evaluator',
    'objkit.events': 'objkit.contract.events',
    'objkit.export': 'objkit.train.export',
    'objkit.faults': 'objkit.distributed.faults',
    'objkit.fetch': 'objkit.data.fetch',
    'objkit.grad_pool': 'objkit.blocks.grad_pool',
    'objkit.hookspecs': 'objkit.contract.hookspecs',
    'objkit.hub': 'objkit.blocks.hub',
    'objkit.interfaces': 'objkit.contract.interfaces',
    'objkit.lazygroup': 'objkit.cli.lazygroup',
    'objkit.lm_head': 'objkit.blocks.lm_head',
    'objkit.masking': 'objkit.blocks.masking',
    'objkit.memory': 'objkit.train.memory',
    'objkit.metrics': 'objkit.train.metrics',
    'objkit.model_card': 'objkit.train.model_card',
    'objkit.momentum': 'objkit.blocks.momentum',
    'objkit.optim': 'objkit.contract.optim',
    'objkit.ownership': 'objkit.data.ownership',
    'objkit.packed': 'objkit.blocks.packed',
    'objkit.plan': 'objkit.train.plan',
    'objkit.plot': 'objkit.cli.plot',
    'objkit.prefetch': 'objkit.train.prefetch',
    'objkit.prepare': 'objkit.train.prepare',
    'objkit.prepare_cmd': 'objkit.cli.prepare',
    'objkit.processes': 'objkit.distributed.processes',
    'objkit.recipe': 'objkit.recipe.loader',
    'objkit.recipe_files': 'objkit.recipe.files',
    'objkit.recipe_sources': 'objkit.recipe.sources',
    'objkit.recipes_cmd': 'objkit.cli.recipes',
    'objkit.registry': 'objkit.contract.registry',
    'objkit.reporting': 'objkit.train.reporting',
    'objkit.runlock': 'objkit.data.runlock',
    'objkit.runner': 'objkit.train.runner',
    'objkit.scaffold': 'objkit.cli.scaffold',
    'objkit.schema': 'objkit.recipe.schema',
    'objkit.seeding': 'objkit.blocks.seeding',
    'objkit.sharded_checkpoint': 'objkit.train.sharded_checkpoint',
    'objkit.source': 'objkit.contract.source',
    'objkit.step': 'objkit.train.step',
    'objkit.tokenizer': 'objkit.data.tokenizer',
    'objkit.trainer': 'objkit.train.trainer',
    'objkit.trainer_resume': 'objkit.train.resume',
    'objkit.vocab': 'objkit.data.vocab',
}
_PACKAGES = ['objkit.fetch']  # moved whole: their submodules follow
_IMPORTLIB = importlib.__file__.rsplit("__init__", 1)[0]


def new_name(old: str) -> str | None:
    """The module ``old`` is now, or None when it did not move."""
    if old in MOVED:
        return MOVED[old]
    for package in _PACKAGES:
        if old.startswith(package + "."):
            return MOVED[package] + old[len(package):]
    return None


def _warn(old: str, new: str) -> None:
    # point at the line that imported the old path, past importlib's and this module's frames
    # (warnings does not count importlib's _bootstrap frames in stacklevel)
    frame, level = sys._getframe(1), 2
    while frame is not None and (frame.f_code.co_filename.startswith(("<frozen importlib", _IMPORTLIB))
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
        if frame is not None and not ("importlib" in frame.f_code.co_filename
                                      and "_bootstrap" in frame.f_code.co_filename):
            level += 1
    warnings.warn(f"{old} moved to {new} in objkit 0.8.0; the old path goes in objkit 1.0",
                  DeprecationWarning, stacklevel=level)


class _AliasLoader:  # importlib.abc is not imported: import objkit stays cheap
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec: Any) -> ModuleType:
        _warn(self.old, self.new)
        self.module = importlib.import_module(self.new)
        self.real_spec = self.module.__spec__
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.real_spec  # the import system set the alias's spec on the real module

    def get_code(self, fullname: str) -> Any:  # ``python -m OLD`` runs NEW
        import importlib.util

        _warn(self.old, self.new)
        spec = importlib.util.find_spec(self.new)
        return spec.loader.get_code(self.new)  # type: ignore[union-attr]

    def is_package(self, fullname: str) -> bool:
        import importlib.util

        spec = importlib.util.find_spec(self.new)
        return spec is not None and spec.submodule_search_locations is not None


class _AliasFinder:
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        new = new_name(fullname) if fullname.startswith("objkit.") else None
        if new is None or new.startswith(fullname + "."):
            return None  # a module that moved into a package of its old name: that package forwards
        loader = _AliasLoader(fullname, new)
        return importlib.machinery.ModuleSpec(fullname, loader, is_package=loader.is_package(fullname))


def moved_attribute(package: str, name: str) -> Any:
    """``package.NAME`` for a package that took an old module's name (``objkit.recipe``)."""
    new = MOVED.get(package)
    module = importlib.import_module(new) if new and not name.startswith("__") else None
    if module is None or not hasattr(module, name):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warnings.warn(f"{package}.{name} moved to {new}.{name} in objkit 0.8.0; the old path goes in objkit 1.0",
                  DeprecationWarning, stacklevel=3)
    return getattr(module, name)


def install() -> None:
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # first: a moved package's submodules must not load twice

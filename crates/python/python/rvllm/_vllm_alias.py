"""Making ``import vllm`` resolve to rvllm, for code written against vLLM's offline API
(LangChain's ``VLLM`` does ``from vllm import LLM, SamplingParams``).

Two opt-in ways, neither of which can shadow a real vLLM:

- ``rvllm.install_as_vllm()``: if no ``vllm`` package is installed (and none is imported),
  registers rvllm and its submodules under the ``vllm`` names in ``sys.modules``.
- ``RVLLM_AS_VLLM=1`` in the environment: the wheel's ``rvllm_as_vllm.pth`` adds an import
  hook at the *end* of ``sys.meta_path``, so ``import vllm`` reaches rvllm only after every
  other finder failed to find a real vllm.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any, Optional

__all__ = ["install_as_vllm", "register_finder", "ALIASES"]

# vllm module name -> rvllm module it resolves to.
ALIASES = {
    "vllm": "rvllm",
    "vllm.sampling_params": "rvllm.sampling_params",
    "vllm.outputs": "rvllm.outputs",
    "vllm.inputs": "rvllm.inputs",
    "vllm.logprobs": "rvllm.logprobs",
    "vllm.sequence": "rvllm.logprobs",
    "vllm.entrypoints.llm": "rvllm.llm",
    "vllm.transformers_utils.tokenizer": "rvllm.tokenizer",
}
# Parent packages that exist only as aliases.
_SYNTHETIC_PACKAGES = ("vllm.entrypoints", "vllm.transformers_utils")


def _real_vllm_spec() -> Optional[Any]:
    """The spec of an installed vllm, found by any finder but ours."""
    for finder in sys.meta_path:
        if isinstance(finder, _AliasFinder):
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec("vllm", None)
        except Exception:  # a broken finder must not break the check
            continue
        if spec is not None:
            return spec
    return None


def install_as_vllm(force: bool = False) -> bool:
    """Makes ``import vllm`` (and ``vllm.sampling_params``, ``vllm.outputs``, ``vllm.inputs``,
    ``vllm.entrypoints.llm``...) give rvllm's modules.

    Does nothing and returns False when a real vLLM is installed or already imported, unless
    ``force=True``. Returns True when ``vllm`` resolves to rvllm.
    """
    rvllm = importlib.import_module("rvllm")
    current = sys.modules.get("vllm")
    if current is rvllm:
        return True
    if not force and (current is not None or _real_vllm_spec() is not None):
        return False
    if force:
        for name in list(sys.modules):
            if name == "vllm" or name.startswith("vllm."):
                del sys.modules[name]
    for name in _SYNTHETIC_PACKAGES:
        mod = types.ModuleType(name, f"rvllm alias package for {name}")
        mod.__path__ = []
        sys.modules[name] = mod
    for name, target in ALIASES.items():
        sys.modules[name] = importlib.import_module(target)
    for name in list(ALIASES) + list(_SYNTHETIC_PACKAGES):
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
    return True


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, module: types.ModuleType):
        self.module = module
        self.spec = getattr(module, "__spec__", None)

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        # The import system set __spec__ to the alias spec: give rvllm back its own.
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: asked for ``vllm`` only when no real vllm was found."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "vllm":
            return None
        if not install_as_vllm():
            return None
        module = sys.modules["vllm"]
        return importlib.util.spec_from_loader("vllm", _AliasLoader(module))


def register_finder() -> None:
    """Adds the import hook (idempotent). Called by ``rvllm_as_vllm.pth`` when
    ``RVLLM_AS_VLLM`` is set."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def _pth_hook() -> None:
    if os.environ.get("RVLLM_AS_VLLM", "").strip().lower() in ("1", "true", "yes", "on"):
        register_finder()

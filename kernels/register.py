"""Make the kernels available to transformers by name, from `import reasoner`.

    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="reasoner_flash")
    model.set_experts_implementation("reasoner_fused")

`import reasoner` must stay cheap, and importing transformers costs seconds, so `register()` does not import
it: it registers into each transformers module as soon as that module has been imported (at once if it
already is), through a post-import hook. Each callback touches only the module that just finished loading,
because the others may still be half-initialised (modeling_utils imports masking_utils, for one).
"""
from __future__ import annotations

import importlib.abc
import logging
import sys
from collections.abc import Callable

ATTENTION = "reasoner_flash"
EXPERTS = "reasoner_fused"
log = logging.getLogger("reasoner.kernels")


def _attention(*args, **kwargs):
    # In here, not at the top: integration imports torch and transformers (about 7 s cold, measured with
    # -X importtime), which `import reasoner` must not pay.
    from reasoner.kernels.integration import attention_forward

    return attention_forward(*args, **kwargs)


def _experts(*args, **kwargs):
    from reasoner.kernels.integration import experts_forward  # as above: torch + transformers on first use only

    return experts_forward(*args, **kwargs)


def _on_modeling_utils(module) -> None:
    module.AttentionInterface.register(ATTENTION, _attention)


def _on_masking_utils(module) -> None:
    # sdpa's boolean mask (None when plain causal) is exactly what the kernel takes; without an entry here
    # transformers would build no mask at all for an unknown name and padding would be lost
    module.AttentionMaskInterface.register(ATTENTION, module.sdpa_mask)


def _on_moe(module) -> None:
    module.ExpertsInterface.register(EXPERTS, _experts)


def _on_flash_utils(module) -> None:
    # transformers treats every name containing "flash" as a flash-attn package and tries to import its
    # functions when the implementation is set; ours is self-contained, so answer that probe with none.
    lazy_imports = module._lazy_imports
    if getattr(lazy_imports, "_reasoner", False):
        return

    def _lazy_imports_or_ours(implementation, *args, **kwargs):
        if implementation == ATTENTION:
            return None, None, None, module._pad_input, module._unpad_input
        return lazy_imports(implementation, *args, **kwargs)

    _lazy_imports_or_ours._reasoner = True
    module._lazy_imports = _lazy_imports_or_ours


_CALLBACKS: dict[str, Callable] = {
    "transformers.modeling_utils": _on_modeling_utils,
    "transformers.masking_utils": _on_masking_utils,
    "transformers.integrations.moe": _on_moe,
    "transformers.modeling_flash_attention_utils": _on_flash_utils,
}
_pending: dict[str, Callable] = {}


def _run(name: str, module) -> None:
    try:
        _CALLBACKS[name](module)
    except Exception:  # never break the transformers import; the names are just missing then
        log.exception("could not register reasoner kernels with %s", name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Post-import hook: finds the module with the other finders, then runs our callback after its code."""

    def find_spec(self, name, path, target=None):
        if name not in _pending:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        _pending.pop(name)
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _run(name, module)

        spec.loader.exec_module = exec_then_register  # this loader instance serves this one module
        return spec


_hook = _AfterImport()


def register() -> None:
    """Idempotent and cheap: imports nothing heavy, compiles nothing."""
    for name in _CALLBACKS:
        if name in sys.modules:  # registering twice just sets the same entries again
            _run(name, sys.modules[name])
        else:
            _pending[name] = _CALLBACKS[name]
    if _pending and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)

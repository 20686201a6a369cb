"""reasoner: R1-style RL for DeepSeek-V3-family MoE models, and a verified LangGraph pipeline."""
from reasoner.kernels.register import register as _register_kernels

__version__ = "0.1.0"

# Makes attn_implementation="reasoner_flash" and set_experts_implementation("reasoner_fused") available.
_register_kernels()


def __getattr__(name):
    # `from reasoner import Reasoner` without paying for langgraph on every `import reasoner`.
    if name in ("Reasoner", "Solution"):
        from reasoner import api

        return getattr(api, name)
    raise AttributeError(f"module 'reasoner' has no attribute {name!r}")

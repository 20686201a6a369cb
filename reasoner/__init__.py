"""reasoner: R1-style RL for DeepSeek-V3-family MoE models, and a verified LangGraph pipeline."""
__version__ = "0.1.0"
from reasoner.kernels.register import register as _register_kernels
_register_kernels()

"""LoRA through peft: adapters on the chosen projections for a stage, merged back before the checkpoint is
written, so every later stage, the evaluation and the pipeline load a plain DeepseekV3 checkpoint."""
from __future__ import annotations

from reasoner.errors import ReasonerError
from reasoner.rl.recipe import LoraConfig


def with_lora(model, config: LoraConfig):
    """The model with trainable adapters (all other weights frozen), or the model itself when LoRA is off."""
    if not config.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(config.target_modules) - names)
    if missing:
        raise ReasonerError(f"lora.target_modules: {missing} are not modules of this model; "
                            f"linear layers here include {sorted(n for n in names if n.endswith('proj'))}")
    peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                                 lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


def merged(model):
    """Adapters folded into the weights they adapt; a model without adapters is returned as it is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model

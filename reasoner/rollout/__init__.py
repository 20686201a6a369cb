"""reasoner.rollout: fast batched rollouts (absorbed MLA over a compressed latent cache) for GRPO and serving.

    from reasoner.rollout import RolloutEngine
    engine = RolloutEngine(model, tokenizer)
    completions = engine.generate(prompt_ids, max_new_tokens=256, temperature=1.0, num_samples=8)
"""
from reasoner.rollout.engine import Completion, RolloutEngine
from reasoner.rollout.sampling import SamplingParams

__all__ = ["Completion", "RolloutEngine", "SamplingParams"]

"""reasoner.rollout: fast batched rollouts (absorbed MLA over a compressed latent cache) for GRPO and serving.

    from reasoner.rollout import RolloutEngine, Sampling, make_rollout_func

    engine = RolloutEngine(model, tokenizer)              # reads the model's weights in place
    completions = engine.generate(prompt_ids, Sampling(temperature=1.0, max_tokens=256, seed=0, stop=("</answer>",)),
                                  num_samples=8)
    # -> [Completion(prompt_index, sample_index, prompt_ids, token_ids, text, finish_reason, logprobs)], prompt-major

    trainer = GRPOTrainer(..., rollout_func=make_rollout_func())   # TRL's hook; no vLLM needed

With a model that has DeepSeek-V3's MTP module (reasoner/mtp.py), `generate` drafts the next-next token with it
and verifies the draft in the same forward (reasoner/rollout/speculative.py; `speculative=False` turns it off):
greedy output is unchanged token for token, sampled output keeps its distribution, and
`engine.acceptance_rate` reports the share of drafts accepted.

One engine is not thread-safe (one static cache): callers that share it take a lock, as the pipeline does.
"""
from reasoner.rollout.engine import Completion, RolloutEngine
from reasoner.rollout.hooks import generate_grouped, make_rollout_func
from reasoner.sampling import Sampling

__all__ = ["Completion", "RolloutEngine", "Sampling", "generate_grouped", "make_rollout_func"]

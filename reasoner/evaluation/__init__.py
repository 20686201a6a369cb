"""reasoner.evaluation: everything measured, in one place, with the grader kept apart from the solver.

grading.py      the grader: the only reader of gold answers and hidden tests (evaluation and GRPO rewards)
metrics.py      accuracy with bootstrap CIs, maj@N voting
checkpoints.py  a checkpoint on a task split: pass@1, maj@K, pass@K, per-problem JSON lines
compare.py      the pipeline vs direct, sampled pass@1 and maj@N at the same budget, and the blind control
controls.py     the question-blind backend
summary.py      summary.json, merged and replaced atomically

Import the modules themselves; this file imports nothing, so `reasoner.rl` can use the grader cheaply.
"""

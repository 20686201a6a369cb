"""The question-blind control: a backend that never reads the prompt and answers in the right format.

Run through the same pipeline, it shows what the checks alone are worth. If the pipeline's accuracy
with it rose above its direct accuracy, something in the pipeline would be reading the answer off the
question (an oracle) rather than checking what the model wrote. It must gain nothing.
"""
from __future__ import annotations

import json
import random
import threading

from reasoner.serving.backends import Backend, Generation


class BlindBackend(Backend):
    """Random answers of the task's shape: numbers (math), expressions of random numbers (countdown),
    programs returning a constant (code), and random plans of random arithmetic for planner calls."""

    name = "question-blind"

    def __init__(self, kind: str, seed: int = 0):
        self.kind, self._rng, self._lock = kind, random.Random(f"blind-{kind}-{seed}"), threading.Lock()

    def generate(self, messages, n, sampling, timeout=None):
        with self._lock:
            texts = [self._answer() for _ in range(n)]
        return [Generation(text, "stop", "(not read)", 0.0) for text in texts]

    def _answer(self) -> str:
        rng = self._rng
        if self.kind == "countdown":
            numbers = [rng.randint(1, 99) for _ in range(rng.randint(3, 4))]
            ops = [rng.choice("+-*/") for _ in numbers[1:]]
            expression = str(numbers[0]) + "".join(f"{op}{n}" for op, n in zip(ops, numbers[1:]))
            return f"<think></think><answer>{expression}</answer>"
        if self.kind == "code":
            return f"<think></think><answer>def f(*args):\n    return {rng.randint(0, 99)}</answer>"
        plan = [f"{rng.randint(1, 20)}{rng.choice('+-*')}{rng.randint(2, 9)}"]
        plan += [f"{{}}{rng.choice('+-*')}{rng.randint(2, 9)}" for _ in range(rng.randint(1, 4))]
        # It cannot tell a planner call from a solver call, so it writes either form at random; a direct answer
        # is what its plan would come to, so both forms guess from the same distribution of numbers.
        if rng.random() < 0.5:
            return json.dumps(plan, separators=(",", ":"))
        value = 0
        for step in plan:
            value = int(eval(step.replace("{}", str(value))))  # noqa: S307 - digits and +-* it wrote itself
        return f"<think></think><answer>{value}</answer>"

"""Every task by name, for `get_task`, recipes and `reasoner eval`."""
from __future__ import annotations

from reasoner.tasks.arithmetic import ArithmeticTask
from reasoner.tasks.code import CodeTask
from reasoner.tasks.countdown import CountdownTask
from reasoner.tasks.real import GSM8KTask, HumanEvalTask, Math500Task
from reasoner.tasks.word import WordTask

TASKS: dict[str, type] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
    "code": CodeTask,
    "word": WordTask,
    "gsm8k": GSM8KTask,
    "math500": Math500Task,
    "humaneval": HumanEvalTask,
}

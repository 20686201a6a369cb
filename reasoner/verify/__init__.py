"""reasoner.verify: the one place that decides whether an answer is right.

Math: extract_answer, answers_equal, check_answer (answers.py).
Code: run_python, run_many, ExecResult (sandbox.py); extract_code, check_code, check_code_many (code.py).
"""
from reasoner.verify.answers import answers_equal, check_answer, extract_answer
from reasoner.verify.code import check_code, check_code_many, extract_code
from reasoner.verify.countdown import check_countdown, countdown_correct
from reasoner.verify.sandbox import ExecResult, run_many, run_python

__all__ = [
    "ExecResult",
    "answers_equal",
    "check_answer",
    "check_code",
    "check_code_many",
    "check_countdown",
    "countdown_correct",
    "extract_answer",
    "extract_code",
    "run_many",
    "run_python",
]

"""reasoner.verify: the one place that decides whether an answer is right.

Math: extract_answer, answers_equal, check_answer (answers.py); calculate (calculator.py); answer_of, majority, majority_completion (vote.py).
Countdown: check_certificate, countdown_question (countdown.py).
Code: run_python, run_many, ExecResult (sandbox.py); extract_code, check_code, check_code_many (code.py).
"""
from reasoner.verify.answers import answers_equal, check_answer, extract_answer
from reasoner.verify.calculator import calculate
from reasoner.verify.code import check_code, check_code_many, extract_code
from reasoner.verify.countdown import check_certificate, check_countdown, countdown_correct, countdown_question
from reasoner.verify.sandbox import ExecResult, run_many, run_python
from reasoner.verify.vote import answer_of, majority, majority_completion, same_text

__all__ = [
    "ExecResult",
    "answer_of",
    "answers_equal",
    "calculate",
    "check_certificate",
    "check_answer",
    "check_code",
    "check_code_many",
    "check_countdown",
    "countdown_correct",
    "countdown_question",
    "extract_answer",
    "extract_code",
    "majority",
    "majority_completion",
    "run_many",
    "run_python",
    "same_text",
]

"""Majority voting, one function for the pipeline's vote and the evaluation's maj@N baseline, over answer_of."""
from __future__ import annotations

from typing import Callable, Sequence

from reasoner.verify.answers import answers_equal, extract_answer
from reasoner.verify.code import extract_code


def answer_of(text: str, kind: str) -> str | None:
    """The extracted answer (a program for code); an empty one ("<answer></answer>") is no answer."""
    answer = extract_code(text) if kind == "code" else extract_answer(text)
    return answer if answer and answer.strip() else None


def majority(answers: Sequence[str | None], same: Callable[[str, str], bool] = answers_equal
             ) -> tuple[str | None, int]:
    """The most common answer and its count; `same` groups equal answers ("0.5" and "1/2" for math,
    identical text for programs and expressions). Missing answers get no vote; ties go to the first."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None or not str(answer).strip():
            continue
        group = next((g for g in groups if same(g[0], answer)), None)
        group.append(answer) if group else groups.append([answer])
    best = max(groups, key=len, default=[])
    return (best[0] if best else None), len(best)


def same_text(a: str, b: str) -> bool:
    """Equality for programs and expressions: the same text, ignoring whitespace."""
    return "".join(a.split()) == "".join(b.split())


def majority_completion(texts: Sequence[str], kind: str) -> tuple[str | None, int]:
    """The first completion carrying the most common answer (equal values for math, the same text for countdown
    and code) and that answer's votes; (None, 0) when no completion has an answer."""
    answers = [answer_of(t, kind) for t in texts]
    answer, votes = majority(answers, answers_equal if kind == "math" else same_text)
    if answer is None:
        return None, 0
    return next(t for t, a in zip(texts, answers) if a == answer), votes

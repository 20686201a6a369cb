"""What a decoding loop produces: tokens, log-probabilities and finish reasons per output row.

Plain decoding (reasoner/rollout/engine.py) emits one token per row per step, speculative decoding
(reasoner/rollout/speculative.py) one or two; both record them here and turn them into `Completion`s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

OnTokens = Callable[[list[int], list[int]], None]  # (output rows, each one's new token) after a step


@dataclass
class Completion:
    """One sampled continuation of one prompt."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]  # includes the EOS token / the tokens that completed a stop string
    text: str  # decoded completion (special tokens skipped); ends with the stop string when one fired
    finish_reason: str  # "eos" | "stop" | "length"
    logprobs: list[float] = field(default_factory=list)  # of each token under the sampling distribution
    logits: torch.Tensor | None = None  # [len(token_ids), vocab] raw logits, only with return_logits=True


class StopChecker:
    """Per-row stop-string detection on the decoded tail of each completion."""

    def __init__(self, tokenizer, stop_strings, batch):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.window = max(len(s) for s in self.stop_strings) + 1  # tokens decode to >= 1 character
        self.tokens: list[list[int]] = [[] for _ in range(batch)]

    def hits(self, rows: list[int], toks: list[int]) -> list[int]:
        """The rows whose text now ends in a stop string, after appending toks[i] to rows[i]."""
        stopped = []
        for r, tok in zip(rows, toks):
            seq = self.tokens[r]
            seq.append(tok)
            tail = self.tokenizer.decode(seq[-self.window:], skip_special_tokens=False)
            if any(s in tail for s in self.stop_strings):
                stopped.append(r)
        return stopped

    def truncate(self, text: str) -> str:
        ends = [text.find(s) + len(s) for s in self.stop_strings if s in text]
        return text[: min(ends)] if ends else text


class Output:
    """Emitted tokens per output row. The decoding batch holds `rows` (batch row -> output row), fewer after
    compaction; a row is done at EOS, at a stop string or after max_new tokens."""

    def __init__(self, engine, batch: int, request, first_row: int = 0):
        """request: the engine's _Request (max_new, stop_strings, ignore_eos, return_logits, on_tokens);
        first_row: this chunk's first output row among the whole call's (what on_tokens is told)."""
        dev, max_new = engine.device, request.max_new
        self.tokenizer, self.max_new = engine.tokenizer, max_new
        self.on_tokens, self.first_row = request.on_tokens, first_row
        self.tok = torch.full((batch, max_new), engine.pad_token_id, dtype=torch.long, device=dev)
        self.lp = torch.zeros(batch, max_new, dtype=torch.float32, device=dev)
        self.count = torch.zeros(batch, dtype=torch.long, device=dev)
        self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.reason = ["length"] * batch
        self.eos = None if request.ignore_eos else torch.tensor(engine.eos_token_ids or [-1], device=dev)
        self.stop = StopChecker(engine.tokenizer, request.stop_strings, batch) if request.stop_strings else None
        self.logits = [[] for _ in range(batch)] if request.return_logits else None
        self.rows = torch.arange(batch, device=dev)

    def active(self) -> torch.Tensor:
        """[batch rows]: still decoding."""
        return ~self.done[self.rows]

    def all_done(self) -> bool:
        return bool(self.done.all())

    def emit(self, tok, lp, logits, valid=None) -> None:
        """Append tok[i] to batch row i's output where `valid` (default: everywhere) and the row is not done.
        tok, lp: [batch rows]; logits: [batch rows, vocab]."""
        take = self.active() if valid is None else valid & self.active()
        rows, tok = self.rows[take], tok[take]
        at = self.count[rows]
        self.tok[rows, at], self.lp[rows, at] = tok, lp[take]
        self.count[rows] = at + 1
        if self.logits is not None:
            for r, row_logits in zip(rows.tolist(), logits[take]):
                self.logits[r].append(row_logits)
        if self.on_tokens is not None:
            self.on_tokens((rows + self.first_row).tolist(), tok.tolist())
        if self.eos is not None:
            self._finish(rows[torch.isin(tok, self.eos)].tolist(), "eos")
        if self.stop is not None:
            self._finish(self.stop.hits(rows.tolist(), tok.tolist()), "stop")
        self.done |= self.count >= self.max_new

    def _finish(self, rows: list[int], reason: str) -> None:
        for r in rows:
            if not self.done[r]:  # EOS first: a row that ended there ignores its stop-string hit
                self.reason[r] = reason
                self.done[r] = True

    def completions(self, prompts, G: int, first_index: int) -> list[Completion]:
        """Output row r is sample r % G of prompt r // G."""
        toks, lps, counts = self.tok.tolist(), self.lp.tolist(), self.count.tolist()
        results = []
        for r, n in enumerate(counts):
            p = r // G
            ids = toks[r][:n]
            text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""
            if self.reason[r] == "stop":
                text = self.stop.truncate(text)
            c = Completion(first_index + p, r % G, prompts[p], ids, text, self.reason[r], lps[r][:n])
            if self.logits is not None:
                c.logits = torch.stack(self.logits[r])
            results.append(c)
        return results

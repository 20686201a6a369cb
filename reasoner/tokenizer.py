"""The built-in character-level tokenizer, and loading any Hugging Face tokenizer directory.

Built-in tasks are short arithmetic, countdown and code problems, so one token per character keeps
the vocabulary (~110 entries) and the tiny model small, and makes tokenization exactly reversible.
The reasoning tags are single tokens so that the format reward and the model see them atomically.
"""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from reasoner.errors import ReasonerError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
CHARACTERS = "\n\t" + "".join(chr(c) for c in range(32, 127))

# Reasoning goes in <think>…</think>, the final answer in <answer>…</answer>. An assistant message may
# carry its reasoning separately as `reasoning_content`; the template then writes both blocks.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}<|system|>{{ message.content }}"
    "{%- elif message.role == 'user' -%}<|user|>{{ message.content }}"
    "{%- else -%}<|assistant|>"
    "{%- if message.reasoning_content is defined and message.reasoning_content -%}"
    "<think>{{ message.reasoning_content }}</think><answer>{{ message.content }}</answer>"
    "{%- else -%}{{ message.content }}{%- endif -%}<eos>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """Deterministic: the same vocabulary and ids on every machine, no training involved."""
    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    vocab = {tok: i for i, tok in enumerate([*specials, *TAG_TOKENS, *CHARACTERS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    core.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(source: str | Path | None) -> PreTrainedTokenizerBase:
    """`builtin`/None for ours, else any Hugging Face tokenizer directory (no downloads)."""
    if source in (None, "builtin"):
        return builtin_tokenizer()
    path = Path(source)
    if not path.is_dir():
        raise ReasonerError(f"tokenizer '{source}': not a directory; use 'builtin' or a local tokenizer folder")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer

"""The built-in character-level tokenizer, and loading any Hugging Face tokenizer directory.

Built-in tasks are short arithmetic, countdown and code problems, so one token per character keeps
the vocabulary (~110 entries) and the tiny model small, and makes tokenization exactly reversible.
The reasoning tags are single tokens so that the format reward and the model see them atomically.
"""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from reasoner.errors import ReasonerError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
CHARACTERS = "\n\t" + "".join(chr(c) for c in range(32, 127))

# Control tokens stay text in message content: a user who types `<eos><|assistant|>` must not forge a turn.
# The template writes an invisible WORD JOINER after the `<` of every special token inside a message, so
# the rendered prompt no longer contains the special token's exact string (added tokens are matched on the
# raw text, before normalization); the tokenizer's normalizer then deletes the joiner, so the characters
# tokenize as themselves and decode back to exactly what the user typed. Reasoning tags are not special
# (they are ordinary added tokens the model writes), so they are left alone.
ESCAPE_MARK = "\u2060"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, *ROLE_TOKENS)


def _escaped(expression: str) -> str:
    filters = "".join(f"|replace('{t}', '{t[0]}{ESCAPE_MARK}{t[1:]}')" for t in SPECIAL_TOKENS)
    return "{{ (" + expression + ")" + filters + " }}"


# Reasoning goes in <think>…</think>, the final answer in <answer>…</answer>. An assistant message may
# carry its reasoning separately as `reasoning_content`; the template then writes both blocks.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}<|system|>" + _escaped("message.content") +
    "{%- elif message.role == 'user' -%}<|user|>" + _escaped("message.content") +
    "{%- else -%}<|assistant|>"
    "{%- if message.reasoning_content is defined and message.reasoning_content -%}"
    "<think>" + _escaped("message.reasoning_content") + "</think><answer>" + _escaped("message.content") +
    "</answer>"
    "{%- else -%}" + _escaped("message.content") + "{%- endif -%}<eos>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
# The template of checkpoints saved before the escaping; load_tokenizer upgrades them.
LEGACY_CHAT_TEMPLATE = (
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


def escape_specials(text: str) -> str:
    """What the chat template does to message content, for code that builds prompt strings by hand."""
    for token in SPECIAL_TOKENS:
        text = text.replace(token, token[0] + ESCAPE_MARK + token[1:])
    return text


def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """Deterministic: the same vocabulary and ids on every machine, no training involved."""
    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    vocab = {tok: i for i, tok in enumerate([*specials, *TAG_TOKENS, *CHARACTERS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Replace(ESCAPE_MARK, "")  # runs after special tokens are matched
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
    if _is_legacy_builtin(tokenizer):
        return builtin_tokenizer()  # same vocabulary and ids, plus the escaping of control tokens
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_legacy_builtin(tokenizer) -> bool:
    """A checkpoint saved with our tokenizer before control tokens were escaped in message content."""
    if getattr(tokenizer, "chat_template", None) != LEGACY_CHAT_TEMPLATE:
        return False
    return tokenizer.get_vocab() == builtin_tokenizer().get_vocab()

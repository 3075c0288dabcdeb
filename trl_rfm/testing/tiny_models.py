"""
Tiny causal LMs and word-level tokenizers built locally, with no Hub access.

Tests, the demo and the examples use them; they are also handy for trying the library on a laptop. The tokenizer is a
real `PreTrainedTokenizerFast` (built with `tokenizers`) with a chat template, so every TRL code path that tokenises
conversations works on it.
"""

import os
import re
from collections import Counter
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

from ..trainer.quiet_args import quiet_training_args


SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# About 0.1M parameters: every CPU test trains it in seconds, and it still has a trunk of several layers under the head.
TINY_LLAMA_SIZES = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}

# Each message is "<|role|> content </s>"; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' </s> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)

_WORD = re.compile(r"\w+|[^\w\s]")


def build_tokenizer(texts: Iterable[str], max_vocab_size: int | None = None, lowercase: bool = True):
    """
    A word-level `PreTrainedTokenizerFast` whose vocabulary is the words of `texts` (most frequent first, up to
    `max_vocab_size`), plus `<pad>`, `<unk>`, `<s>`, `</s>` and the chat role tokens. Right padding, as TRL's reward
    trainer expects; the chat template is [`CHAT_TEMPLATE`].
    """
    counts = Counter()
    for text in texts:
        counts.update(_WORD.findall(text.lower() if lowercase else text))
    specials = [*SPECIAL_TOKENS.values(), *ROLE_TOKENS]
    words = [w for w, _ in counts.most_common(max_vocab_size) if w not in specials]
    vocab = {token: i for i, token in enumerate(specials + words)}

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **SPECIAL_TOKENS,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **sizes) -> PreTrainedModel:
    """A randomly initialised Llama-architecture causal LM sized for `tokenizer`: [`TINY_LLAMA_SIZES`], any of which
    `sizes` overrides (`hidden_size=16`, ...), with tied embeddings and as many key-value heads as attention heads."""
    sizes = {**TINY_LLAMA_SIZES, **sizes}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=sizes["num_attention_heads"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **sizes,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def save_tiny_causal_lm(output_dir: str | os.PathLike, texts: Iterable[str], seed: int = 0, **model_kwargs) -> str:
    """Builds a tokenizer on `texts` and a tiny causal LM, saves both to `output_dir` and returns the path, which
    `from_pretrained` (and every `model=` argument taking a path) then loads like a Hub checkpoint."""
    tokenizer = build_tokenizer(texts)
    model = build_tiny_causal_lm(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return str(output_dir)


def quiet_cpu_args(config_class, **options):
    """[`quiet_training_args`] on the CPU: for tests and demos."""
    return quiet_training_args(config_class, **{"use_cpu": True, **options})

"""
Pooling: which hidden states of the trunk the reward features read, `[B, T, H] -> [B, H]`.

- `"last"`: the hidden state of the last attended token. Causal LMs (Llama, Qwen2, GPT-2, ...) see the whole sequence
  only there; this is also what `*ForSequenceClassification` decoders and TRL's reward models read.
- `"cls"`: the first attended token (BERT's `[CLS]`, RoBERTa's `<s>`), the classic encoder choice.
- `"mean"`: the mean over attended tokens (special tokens included), how sentence-transformers pools
  (`sentence-transformers/all-MiniLM-L6-v2` is trained mean-pooled).
- `"auto"` (the default): `"mean"` for bidirectional encoders, `"last"` for everything else (see
  [`resolve_pooling`]).

Note the difference with stock encoder reward models: `BertForSequenceClassification` (what
`AutoModelForSequenceClassification` gives for BERT/MiniLM, and so what `trl.RewardTrainer` trains) reads
`tanh(W h_CLS + b)` through BERT's pooler, not the raw `[CLS]` state nor the mean; DeBERTa-v2 reads its
`ContextPooler(h_CLS)`; RoBERTa a two-layer head on `<s>`.
"""

import torch
from transformers import PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES


POOLINGS = ("auto", "last", "cls", "mean")


def is_encoder_config(config: PreTrainedConfig) -> bool:
    """True for bidirectional encoders (BERT, RoBERTa, DeBERTa, DistilBERT, ModernBERT, ...): model types with a
    masked-LM head in transformers, not configured as decoders, and not encoder-decoders."""
    return (
        config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "is_encoder_decoder", False)
    )


def resolve_pooling(pooling: str, config: PreTrainedConfig | None) -> str:
    """The concrete pooling for a trunk config: `pooling` itself unless `"auto"`, then `"mean"` for encoders and
    `"last"` otherwise (including when the config is unknown)."""
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
    if pooling != "auto":
        return pooling
    return "mean" if config is not None and is_encoder_config(config) else "last"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last attended token of each row, for right or left padding alike. [B, T] -> [B]"""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the first attended token of each row (0 with right padding). [B, T] -> [B]"""
    return attention_mask.long().argmax(dim=-1)


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pools `hidden [B, T, H]` with `attention_mask [B, T]` into `[B, H]` (`pooling`: `"last"`, `"cls"`, `"mean"`;
    resolve `"auto"` first with [`resolve_pooling`])."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last":
        return hidden[rows, last_token_index(attention_mask)]
    if pooling == "cls":
        return hidden[rows, first_token_index(attention_mask)]
    if pooling == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"Unknown pooling {pooling!r}; expected 'last', 'cls' or 'mean' (resolve 'auto' first).")

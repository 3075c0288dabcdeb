"""
Tokenising and featurising preference pairs for adaptation: one batched backbone pass over a user's comparisons gives
the feature differences `phi(x, chosen) - phi(x, rejected)`, after which adaptation never touches the backbone again.

[`tokenize_sequence`] is the one implementation of "tokenise like TRL's `RewardTrainer`" in trl-rfm: the trainer's
pairs, the adaptation features, [`PersonalizedReward`] and the benchmarks all go through it (or through TRL itself),
so that a reward is always read on the token ids it was trained on.
"""

import json
from collections.abc import Hashable, Sequence

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import is_conversational
from trl.trainer.utils import pad

from ..models.from_reward_model import score_head
from ..models.limits import truncate_to_limit
from ..models.modeling_rfm import RewardFeatureModel, last_token_index
from ..models.user_table import normalize_user_id
from .solver import as_tensor


def tokenize_sequence(
    processing_class: PreTrainedTokenizerBase, prompt, completion, cache: dict | None = None, **chat_template_kwargs
) -> list[int]:
    """
    Token ids of `prompt + completion` exactly as TRL's `RewardTrainer` tokenises a response: conversations (lists of
    messages; a text completion of a conversational prompt becomes an assistant message) through the chat template,
    plain text with EOS appended when missing. `prompt` may be `None` (implicit prompt: `completion` is the whole
    sequence). `cache` (text -> ids) tokenises each distinct plain text once.
    """
    if is_conversational({"prompt": prompt} if prompt is not None else {"chosen": completion}):
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        messages = (prompt or []) + completion
        return list(
            processing_class.apply_chat_template(messages, tokenize=True, return_dict=True, **chat_template_kwargs)[
                "input_ids"
            ]
        )
    if not isinstance(completion, str) or not isinstance(prompt, (str, type(None))):
        raise TypeError(
            "Prompts and completions must both be text, or both be conversations (lists of messages); "
            f"got {type(prompt).__name__} and {type(completion).__name__}."
        )
    eos = processing_class.eos_token
    # No EOS (BERT-style tokenizers close every sequence with their own `[SEP]`): nothing is appended.
    text = (prompt or "") + (completion if eos is None or completion.endswith(eos) else completion + eos)
    if cache is None:
        return list(processing_class(text=text)["input_ids"])
    if text not in cache:
        cache[text] = list(processing_class(text=text)["input_ids"])
    return cache[text]


def tokenize_preferences(
    dataset: Dataset,
    processing_class: PreTrainedTokenizerBase,
    max_length: int | None = None,
    cache: dict | None = None,
) -> Dataset:
    """
    Adds the `chosen_ids`/`rejected_ids` TRL's `RewardTrainer` computes for training (any TRL preference format:
    explicit or implicit prompt, text or conversations; `tools` and `chat_template_kwargs` columns honoured), so that
    cached features match the ones the model was trained on (a tokenizer without EOS, e.g. BERT's, gets none appended:
    `trl.RewardTrainer` itself fails on such a tokenizer, and accepts the datasets returned here); pairs longer than `max_length` are dropped, as TRL does.
    A dataset that already has these columns is kept as it is (TRL skips its tokenisation too). `cache` (text -> ids)
    tokenises each distinct plain text once, for datasets whose responses repeat.
    """
    columns = set(dataset.column_names)
    if not {"chosen_ids", "rejected_ids"} <= columns:
        has_prompt = "prompt" in columns

        def ids_of(row: dict, response) -> list[int]:
            tools = row.get("tools")
            options = {"tools": json.loads(tools) if isinstance(tools, str) else tools}
            options.update(row.get("chat_template_kwargs") or {})
            prompt = row["prompt"] if has_prompt else None
            if not is_conversational({"chosen": response}):
                options = {}
            return tokenize_sequence(processing_class, prompt, response, cache, **options)

        rows = dataset.to_list() if cache is not None else None
        if rows is not None:  # one pass in Python: the cache must be shared across rows
            dataset = dataset.add_column("chosen_ids", [ids_of(row, row["chosen"]) for row in rows])
            dataset = dataset.add_column("rejected_ids", [ids_of(row, row["rejected"]) for row in rows])
        else:
            dataset = dataset.map(
                lambda row: {"chosen_ids": ids_of(row, row["chosen"]), "rejected_ids": ids_of(row, row["rejected"])}
            )
    if max_length is not None:
        dataset = dataset.filter(
            lambda row: len(row["chosen_ids"]) <= max_length and len(row["rejected_ids"]) <= max_length
        )
    return dataset


def pair_lengths(dataset: Dataset) -> list[int]:
    """Length of each tokenised pair: that of its longer sequence, what a collator pads the pair to."""
    return [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]


@torch.no_grad()
def _pair_differences(
    featurize, model, processing_class, dataset, batch_size, max_length, show_progress, description
) -> torch.Tensor:
    """`featurize(chosen) - featurize(rejected)` of every pair; `featurize(input_ids, attention_mask)` maps a
    right-padded batch of sequences to one row of outputs each. Each distinct token sequence is featurised once: pairs
    derived from ratings or votes reuse every rated response in many pairs (Polis, the training split of
    `benchmarks/polis_protocols.py`: 139,894 pairs of 551 distinct sequences; refitting every training participant
    took 4 s instead of 150-185 s). Sequences go in order of length, `2 * batch_size` at a time, padded little."""
    tokenized = tokenize_preferences(dataset, processing_class, max_length)
    if len(tokenized) != len(dataset):
        raise ValueError("Some pairs were dropped by `max_length`; raise it so that every pair keeps its features.")
    index_of: dict[tuple[int, ...], int] = {}  # distinct sequence -> its row of `features`
    columns = tokenized.select_columns(["chosen_ids", "rejected_ids"])[:]  # one read: per-row reads cost a query each
    chosen, rejected = (
        torch.tensor([index_of.setdefault(tuple(ids), len(index_of)) for ids in columns[column]], dtype=torch.long)
        for column in ("chosen_ids", "rejected_ids")
    )
    if not index_of:
        return None
    # Longer than the trunk's positions (when `max_length` is None): the last tokens are kept, as in scoring.
    distinct = truncate_to_limit([list(ids) for ids in index_of], max_length, model, "sequences")
    by_length = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))
    pad_token_id = processing_class.pad_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    features = None
    try:
        for start in tqdm(range(0, len(by_length), 2 * batch_size), desc=description, disable=not show_progress):
            rows = by_length[start : start + 2 * batch_size]
            sequences = [torch.tensor(distinct[i]) for i in rows]
            input_ids = pad(sequences, padding_value=pad_token_id, padding_side="right").to(device)
            attention_mask = pad([torch.ones_like(s) for s in sequences], padding_value=0, padding_side="right")
            outputs = featurize(input_ids, attention_mask.to(device)).float().cpu()  # [len(rows), ...]
            if features is None:
                features = outputs.new_empty(len(distinct), *outputs.shape[1:])
            features[torch.tensor(rows)] = outputs
    finally:
        model.train(was_training)
    return features[chosen] - features[rejected]


@torch.no_grad()
def compute_feature_differences(
    model: RewardFeatureModel,
    processing_class: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """
    `phi(x, chosen) - phi(x, rejected)` for every pair of `dataset` (any TRL preference format), on the model's
    device, in batches. Returns a float32 CPU tensor `[pairs, d]` in dataset order.
    """

    def featurize(input_ids, attention_mask):
        return model.reward_features(input_ids=input_ids, attention_mask=attention_mask)

    differences = _pair_differences(
        featurize, model, processing_class, dataset, batch_size, max_length, show_progress, "Reward features"
    )
    return differences if differences is not None else torch.zeros(0, model.config.num_features)


@torch.no_grad()
def compute_score_head_input_differences(
    model: PreTrainedModel,
    processing_class: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """
    For an ordinary reward model (`AutoModelForSequenceClassification`, one label, e.g. trained by
    `trl.RewardTrainer`): the difference, chosen minus rejected, of the hidden state its score head reads (the last
    real token's for decoders; for BERT/DeBERTa-v2, the pooler output the classifier reads). These fixed features make the "linear" adaptive baseline: a per-user logistic regression on them,
    with the prior centred on the score head's weights, is the reward model itself at 0 pairs. `[pairs, hidden]`.
    """
    head = score_head(model)
    captured = {}
    hook = head.register_forward_hook(lambda module, inputs, output: captured.update(hidden=inputs[0]))

    def featurize(input_ids, attention_mask):
        model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = captured.pop("hidden")  # [B, T, H]; encoders' heads read an already pooled [B, H]
        if hidden.dim() == 2:  # BERT: the pooler's tanh(W h_CLS + b); DeBERTa-v2: its ContextPooler
            return hidden
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]

    try:
        differences = _pair_differences(
            featurize, model, processing_class, dataset, batch_size, max_length, show_progress, "Score-head inputs"
        )
    finally:
        hook.remove()
    return differences if differences is not None else torch.zeros(0, head.in_features)


def group_by_user(
    feature_differences: torch.Tensor, user_ids: Sequence[Hashable], users: Sequence[Hashable] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """
    Pads per-pair features `[N, d]` into per-user blocks: returns `([users, max_pairs, d], mask [users, max_pairs],
    user ids)`, users in first-seen order, or in the order of `users` when given (a user of `users` without rows gets
    an empty block, and rows of users not in `users` are left out).
    """
    feature_differences = as_tensor(feature_differences, "feature_differences")
    if feature_differences.ndim != 2:
        raise ValueError(f"`feature_differences` must be [pairs, d], got shape {tuple(feature_differences.shape)}.")
    if isinstance(user_ids, (str, bytes)):
        raise TypeError("`user_ids` must be a sequence of ids, one per row, not a single string.")
    user_ids = list(user_ids)
    if len(user_ids) != feature_differences.shape[0]:
        raise ValueError(f"{len(user_ids)} user ids for {feature_differences.shape[0]} feature rows.")
    order: dict[str, list[int]] = {}
    for row, user_id in enumerate(user_ids):
        order.setdefault(normalize_user_id(user_id), []).append(row)
    max_pairs = max((len(rows) for rows in order.values()), default=0)
    keys = list(order) if users is None else [normalize_user_id(u) for u in users]
    grouped = torch.zeros(len(keys), max_pairs, feature_differences.shape[-1], dtype=feature_differences.dtype)
    mask = torch.zeros(len(keys), max_pairs)
    for i, key in enumerate(keys):
        rows = order.get(key, [])
        grouped[i, : len(rows)] = feature_differences[rows]
        mask[i, : len(rows)] = 1
    return grouped, mask, keys


@torch.no_grad()
def compute_response_features(
    model: RewardFeatureModel,
    processing_class: PreTrainedTokenizerBase,
    prompts: Sequence,
    responses: Sequence,
    batch_size: int = 256,
) -> torch.Tensor:
    """The features `phi(x, y)` of individual responses, tokenised as in training: `[N, d]` float32 on CPU."""
    sequences = [torch.tensor(tokenize_sequence(processing_class, p, r)) for p, r in zip(prompts, responses)]
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        input_ids = pad(batch, padding_value=processing_class.pad_token_id, padding_side="right").to(device)
        attention_mask = pad([torch.ones_like(s) for s in batch], padding_value=0, padding_side="right").to(device)
        out.append(model.reward_features(input_ids=input_ids, attention_mask=attention_mask).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.num_features)

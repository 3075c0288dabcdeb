"""
Model cards of Reward Feature Models: TRL's reward-model card (`trl.trainer.utils.generate_model_card`), with the
Hub metadata and the sections a personalised reward model needs (features, raters, evaluation, adapting a new user).
"""

import os
import re

from huggingface_hub import ModelCard


RFM_TAGS = ["trl", "reward-model", "personalization", "trl-rfm"]
TRAINER_NAME = "RFM Reward (trl-rfm)"
PAPER_CITATION = """@article{barreto2025capturing,
  title   = {{Capturing Individual Human Preferences with Reward Features}},
  author  = {Barreto, Andr{\\'e} and others},
  year    = {2025}
}"""
# Metrics logged by `RFMRewardTrainer.evaluate`, in the order shown, with their meaning.
EVAL_METRICS = {
    "eval_accuracy": "accuracy, each rater's own reward",
    "eval_population_accuracy": "accuracy, population reward",
    "eval_user_macro_accuracy": "accuracy averaged over raters, own reward",
    "eval_population_user_macro_accuracy": "accuracy averaged over raters, population reward",
    "eval_loss": "loss",
}
_PLACEHOLDER_REPO = "<namespace>/<model>"


def base_model_id(model) -> str | None:
    """The Hub id of the trunk the model was built on (local paths are not Hub ids)."""
    name = getattr(model.config.text_config, "_name_or_path", None) or None
    return None if name is None or os.path.isdir(name) or os.path.isabs(name) else name


def build_model_card(
    model,
    *,
    model_name: str | None = None,
    hub_model_id: str | None = None,
    dataset_name: str | None = None,
    tags: list[str] | None = None,
    is_adapter: bool = False,
    num_training_users: int | None = None,
    includes_user_weights: bool | None = None,
    eval_results: dict[str, float] | None = None,
) -> ModelCard:
    """A model card for `model` (a [`RewardFeatureModel`]): TRL's reward-model card, see [`personalize_model_card`]."""
    from trl.trainer.utils import generate_model_card

    model_name = model_name or (hub_model_id.split("/")[-1] if hub_model_id else "reward-feature-model")
    card = generate_model_card(
        base_model=base_model_id(model),
        model_name=model_name,
        hub_model_id=hub_model_id or _PLACEHOLDER_REPO,
        dataset_name=dataset_name,
        tags=list(tags or []),
        wandb_url=None,
        trackio_url=None,
        trainer_name=TRAINER_NAME,
        trainer_citation=PAPER_CITATION,
        template_file="rm_model_card.md",
    )
    return personalize_model_card(
        card,
        model,
        hub_model_id=hub_model_id,
        is_adapter=is_adapter,
        num_training_users=num_training_users,
        includes_user_weights=includes_user_weights,
        eval_results=eval_results,
    )


def personalize_model_card(
    card: ModelCard,
    model,
    *,
    hub_model_id: str | None = None,
    is_adapter: bool = False,
    num_training_users: int | None = None,
    includes_user_weights: bool | None = None,
    eval_results: dict[str, float] | None = None,
) -> ModelCard:
    """
    Turns a TRL reward-model card into a Reward Feature Model card, in place: YAML metadata (`library_name`, the tags
    `trl`, `reward-model`, `personalization`, `trl-rfm`, `base_model`), TRL's pipeline quick start replaced by how to
    score users and adapt a new one, and a section with `d`, the number of training raters, whether their weights
    are in the repo, and the evaluation figures when known.
    """
    data = card.data
    data.library_name = "peft" if is_adapter else "transformers"
    data.tags = list(dict.fromkeys([*(data.tags or []), *RFM_TAGS, *(["lora"] if is_adapter else [])]))
    if data.base_model is None and base_model_id(model) is not None:
        data.base_model = base_model_id(model)
    repo = hub_model_id or _PLACEHOLDER_REPO
    text = card.text
    if data.base_model is None:  # TRL's template assumes a base model on the Hub
        text = re.sub(r"This model is a fine-tuned version of \[None\]\([^)]*\)", "This model was trained", text)
    start, end = text.find("## Quick start"), text.find("## Training procedure")
    section = _rfm_section(model, repo, is_adapter, num_training_users, includes_user_weights, eval_results)
    if start != -1 and end > start:
        text = text[:start] + section + text[end:]
    elif end != -1:
        text = text[:end] + section + text[end:]
    else:
        text = text + "\n" + section
    card.text = text
    return card


def _rfm_section(model, repo, is_adapter, num_training_users, includes_user_weights, eval_results) -> str:
    config = model.config
    num_training_users = model.num_users if num_training_users is None else num_training_users
    if includes_user_weights is None:
        users = (
            "Their weights and ids, personal data, are in `user_weights.safetensors` when this folder has it; "
            "`push_to_hub` leaves them out unless asked (`push_user_weights=True`)."
        )
    elif includes_user_weights:
        users = "Their weights and ids are in `user_weights.safetensors` (uploaded on request: personal data)."
    elif num_training_users:
        users = (
            "Their weights are personal data and are **not** in this repository: they were withheld from the upload "
            "(`config.json` says so: `num_saved_users`, `user_weights_withheld`), so loading asks for "
            "`user_weights=False`, the population model, which scores everyone with the population weights and adapts "
            "to any user from a few of their comparisons (below), or for a private copy of the weights "
            "(`user_weights=<path>`)."
        )
    else:
        users = "The model has no user weights: it scores everyone with the population weights."
    options = ", user_weights=False" if includes_user_weights is False and num_training_users else ""
    load = (
        f'model = RewardFeatureModel.from_pretrained("{repo}"{options}).merge_and_unload()  # LoRA merged in'
        if is_adapter
        else f'model = RewardFeatureModel.from_pretrained("{repo}"{options})  # or AutoModelForSequenceClassification'
    )
    lines = [
        "## Personalised rewards",
        "",
        "A **Reward Feature Model** (RFM, Barreto et al. 2025): the trunk maps a conversation to "
        f"`d = {config.num_features}` reward features `phi(x, y)` (normalisation: `{config.feature_normalization}`), "
        "and each user is a weight vector `w_u`, with reward `r_u(x, y) = phi(x, y) · w_u`. Unknown users get the "
        f"population weights `w_pop` ({config.population_weights}).",
        "",
        f"- Feature dimension `d`: {config.num_features}",
        f"- Training raters: {num_training_users}. {users}",
    ]
    if eval_results:
        lines += ["", "### Evaluation", "", "| metric | value |", "|---|---|"]
        for key, label in EVAL_METRICS.items():
            if key in eval_results:
                lines.append(f"| {label} (`{key}`) | {eval_results[key]:.4f} |")
    lines += [
        "",
        "## Quick start",
        "",
        "```python",
        "import trl_rfm  # registers the model with the transformers Auto classes",
        "from transformers import AutoTokenizer",
        "from trl_rfm import RewardFeatureModel",
        "",
        load,
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        'batch = tokenizer(["A conversation to score."], return_tensors="pt")',
        "population_reward = model(**batch).logits  # [batch, 1]",
        "```",
        "",
        "### Adapting to a new user",
        "",
        "Fit the user's weights on a few dozen of their comparisons (a `datasets.Dataset` with `prompt`, `chosen`, "
        "`rejected`): the features are computed once, then a regularised logistic regression centred on the "
        "population weights, so zero comparisons give the population model.",
        "",
        "```python",
        "from trl_rfm import compute_feature_differences, fit_user_weights, prior_from_model",
        "",
        "differences = compute_feature_differences(model, tokenizer, user_comparisons)  # [pairs, d]",
        "prior_mean, l2 = prior_from_model(model)",
        "weights = fit_user_weights(differences[None], prior_mean=prior_mean, l2=l2)  # [1, d]",
        'model.add_users(["new-user"], weights)',
        'personal_reward = model(**batch, user_ids=["new-user"]).logits',
        "```",
        "",
        "",
    ]
    return "\n".join(lines)

"""
Host-device synchronisations on the hot paths, counted on the CPU: every Python-level read of a tensor's value
(`Tensor.item`, `tolist`, `numpy`, `__bool__` (an `if` on a tensor), `__int__`, `__float__`, `__index__`, `nonzero`,
`cpu`) is a point where, on a GPU, the host waits for the device. The training step of a LoRA RFM with a rater column
must make at most one more than stock `trl.RewardTrainer` on the same batch (its population accuracy), and
`PersonalizedReward.__call__` only one copy of the scores to the host; `docs/architecture.md` lists them with their reasons. Adding one fails here.

Not seen from Python: the synchronisations inside torch's C++ (boolean-mask indexing, `torch.unique`, ...); the audit in
`docs/architecture.md` covers those by reading the code.
"""

import collections
import traceback

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification, TrainerCallback
from trl import RewardConfig, RewardTrainer

from trl_rfm import PersonalizedReward, RewardFeatureModel, RFMConfig, RFMRewardTrainer
from trl_rfm.testing import build_tiny_causal_lm, build_tokenizer


# Measured with torch 2.13, transformers 5.25, TRL 1.16: TRL's own metric logging in `compute_loss` reads its
# figures with `.item()`; the RFM adds its population accuracy (`docs/architecture.md`).
EXTRA_RFM_STEP_SYNCS = 1
# The scores, copied to the host once (`.cpu()`, then `.tolist()` of the host copy): the list of floats it returns.
PERSONALIZED_REWARD_OWN_SYNCS = {
    "cpu in rewards/personalized_reward.py:score",
    "tolist in rewards/personalized_reward.py:__call__",
}
SYNCING_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu")
PAIRS = [
    ("What colour is the sky?", "It is blue.", "It is green."),
    ("Name a fruit.", "An apple.", "A chair."),
    ("How many legs has a cat?", "Four legs.", "Nine wheels."),
    ("Where do fish live?", "In water.", "On the moon."),
    ("What do bees make?", "Bees make honey.", "Bees make steel."),
    ("Is ice cold?", "Yes, ice is cold.", "No, ice is hot."),
]
RATERS = ["alice", "bob", "carol"]


class SyncCounter:
    """Counts the calls of `SYNCING_METHODS` on tensors (and `torch.nonzero`) while `active`, with where each was made
    (file and function of the innermost frame outside torch)."""

    def __init__(self, monkeypatch, active: bool = True):
        self.sites, self.active = collections.Counter(), active
        for name in SYNCING_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), name))
        monkeypatch.setattr(torch, "nonzero", self._wrap(torch.nonzero, "torch.nonzero"))

    def _wrap(self, method, name):
        counter = self

        def counted(*args, **kwargs):
            if counter.active:
                frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
                frame = frames[-1]
                where = f"{frame.filename.split('site-packages/')[-1].split('/trl_rfm/')[-1]}:{frame.name}"
                counter.sites[f"{name} in {where}"] += 1
            return method(*args, **kwargs)

        return counted

    @property
    def total(self) -> int:
        return sum(self.sites.values())


class CountSecondStep(TrainerCallback):
    """Counts during the second optimisation step (the first sets things up lazily): forward, loss and metrics,
    backward, gradient clipping, optimizer and scheduler steps."""

    def __init__(self, counter: SyncCounter):
        self.counter = counter

    def on_step_begin(self, args, state, control, **kwargs):
        self.counter.active = state.global_step == 1

    def on_step_end(self, args, state, control, **kwargs):
        self.counter.active = False


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([text for pair in PAIRS for text in pair])


def _dataset(raters: bool) -> Dataset:
    rows = [{"prompt": p, "chosen": " " + c, "rejected": " " + r} for p, c, r in PAIRS]
    if raters:
        for i, row in enumerate(rows):
            row["user_id"] = RATERS[i % len(RATERS)]
    return Dataset.from_list(rows)


def _count_training_step(trainer, monkeypatch) -> SyncCounter:
    counter = SyncCounter(monkeypatch, active=False)
    trainer.add_callback(CountSecondStep(counter))
    trainer.train()
    return counter


def _args(config_class, tmp_path, **extra):
    return config_class(
        output_dir=str(tmp_path),
        per_device_train_batch_size=6,
        max_steps=2,
        logging_strategy="no",
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        **extra,
    )


def test_a_lora_rfm_step_syncs_at_most_once_more_than_trl(tmp_path, tokenizer, monkeypatch):
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    torch.manual_seed(0)
    lm = build_tiny_causal_lm(tokenizer, hidden_size=16, num_hidden_layers=1, intermediate_size=32)
    lm.save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    lm.config.num_labels = 1
    AutoModelForSequenceClassification.from_config(lm.config).save_pretrained(tmp_path / "rm")
    stock = RewardTrainer(
        model=str(tmp_path / "rm"),
        args=_args(RewardConfig, tmp_path / "trl"),
        train_dataset=_dataset(raters=False),
        processing_class=tokenizer,
        peft_config=lora,
    )
    rfm = RFMRewardTrainer(
        model=str(tmp_path / "lm"),
        args=_args(RFMConfig, tmp_path / "rfm", num_features=4),
        train_dataset=_dataset(raters=True),
        processing_class=tokenizer,
        peft_config=lora,
    )
    stock_syncs, rfm_syncs = _count_training_step(stock, monkeypatch), _count_training_step(rfm, monkeypatch)
    report = f"TRL: {dict(stock_syncs.sites)}\nRFM: {dict(rfm_syncs.sites)}"
    assert rfm_syncs.total <= stock_syncs.total + EXTRA_RFM_STEP_SYNCS, report


def test_personalized_reward_call_copies_the_scores_to_the_host_once(tokenizer, monkeypatch):
    torch.manual_seed(0)
    lm = build_tiny_causal_lm(tokenizer, hidden_size=16, num_hidden_layers=1, intermediate_size=32)
    model = RewardFeatureModel.from_backbone(lm, num_features=4, user_ids=RATERS).eval()
    reward = PersonalizedReward(model, tokenizer, device="cpu")
    prompts = [p for p, _, _ in PAIRS]
    completions = [c for _, c, _ in PAIRS]
    user_ids = [RATERS[i % 3] for i in range(len(PAIRS))]
    reward(prompts, completions, user_id=user_ids)  # moves the model on first use
    counter = SyncCounter(monkeypatch)
    scores = reward(prompts, completions, user_id=user_ids)
    counter.active = False
    assert len(scores) == len(PAIRS)
    own = {site for site in counter.sites if " in rewards/" in site or " in models/" in site or " in io/" in site}
    assert own == PERSONALIZED_REWARD_OWN_SYNCS, dict(counter.sites)
    # The rest is the trunk's: transformers' SDPA mask reads the padding mask (`fast_all`) to choose `is_causal`.
    assert all("transformers/masking_utils.py" in site for site in set(counter.sites) - own), dict(counter.sites)

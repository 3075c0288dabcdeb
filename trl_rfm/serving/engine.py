"""
The scoring engine behind `trl-rfm serve` and the in-process integrations: a [`PersonalizedReward`] on one worker
thread, fed by a [`MicroBatcher`], and the users it may add and persist.

Rewards are `PersonalizedReward`'s: the same tokenisation (TRL's `RewardTrainer`'s; OpenRLHF queries through
[`tokenize_query`]), the same feature pass (`features_of_sequences`) and the same `phi · w_u` in float32. The users
are read on the worker thread from a snapshot (ids and float32 table) taken after every addition, so a pass never
mixes two versions of the table.
"""

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset

from ..adaptation.adapt_users import adapt_users
from ..io.feature_head import locate_feature_head
from ..io.user_weights_file import USER_WEIGHTS_NAME, load_user_weights, save_user_weights
from ..models.limits import truncate_to_limit
from ..models.user_table import POPULATION_INDEX
from ..rewards.personalized_reward import PersonalizedReward
from .arguments import EngineArguments
from .batching import MicroBatcher, ScoreJob
from .protocol import RequestError, UnknownUserError, normalize_request_user, tokenize_query, user_of_label


@dataclass
class ScoreResult:
    """Rewards of a request's samples for their own users, and under the population weights."""

    rewards: list[float]
    population_rewards: list[float]


@dataclass
class AdaptResult:
    user_id: str
    replaced: bool  # the user existed and their weights were replaced
    num_comparisons: int
    num_users: int


@dataclass(frozen=True)
class _Users:
    """What a pass reads: the row of each user id and the table `[U + 1, d]` (last row: population), float32."""

    rows: dict[str, int]
    table: torch.Tensor


class RewardEngine:
    """
    Scores prompt + completion pairs, or OpenRLHF queries, for their users, with micro-batching across concurrent
    callers (thread-safe), and adds users fitted from their comparisons, persisted to `user_weights_file`.

    Args:
        reward ([`PersonalizedReward`]): the reward, around a plain (merged) [`RewardFeatureModel`].
        unknown_users (`str`): `"population"` scores unknown users with the population weights, `"error"` refuses the
            request naming them.
        user_weights_file (`str`, *optional*): where added users are written, with every other user (atomically).
            `None`: users cannot be added.
        fingerprint (`str`, *optional*): the feature fingerprint written into the user file (that of the saved
            model's feature head, which loading checks).
    """

    def __init__(
        self,
        reward: PersonalizedReward,
        unknown_users: str = "population",
        user_weights_file: str | None = None,
        fingerprint: str | None = None,
    ):
        if unknown_users not in ("population", "error"):
            raise ValueError(f"`unknown_users` must be 'population' or 'error', got {unknown_users!r}.")
        if is_peft_model(reward.model):
            raise ValueError("Merge LoRA adapters first (`merge_and_unload()`): users are added to the plain model.")
        if user_weights_file is not None and fingerprint is None:
            raise ValueError("`fingerprint` is required with `user_weights_file`.")
        self.reward = reward
        self.unknown_users = unknown_users
        self.user_weights_file = user_weights_file
        self.fingerprint = fingerprint
        self.reward.model.to(reward.device).eval()
        # What the user file holds, rewritten whole at every addition: the model's users, with the rows read from the
        # file when it holds the same users, so that serving in bfloat16 does not round the users it rewrites.
        self._saved_ids = reward.rfm.user_ids
        with torch.no_grad():
            self._saved_rows = reward.rfm.user_weights()[:-1].detach().float().cpu()
        if user_weights_file is not None and os.path.isfile(user_weights_file):
            saved = load_user_weights(user_weights_file, reward.rfm.config.num_features, fingerprint)
            if saved.user_ids == self._saved_ids:
                self._saved_rows = saved.weights
        self._users = self._snapshot()
        # Request threads and the worker (adapting) share the tokenizer; a fast tokenizer's backend is not meant to be
        # used by two threads at once.
        self._tokenizer_lock = threading.Lock()
        self._batcher = MicroBatcher(self._run_batch, max_sequences=reward.batch_size)

    @classmethod
    def from_arguments(cls, args: EngineArguments) -> "RewardEngine":
        """Loads the model (merging a LoRA adapter), its tokenizer and its users as `args` says."""
        from transformers import AutoModel, AutoTokenizer

        path = args.model_name_or_path
        user_file = args.user_weights_file
        if user_file is None and os.path.isdir(path):
            user_file = os.path.join(path, USER_WEIGHTS_NAME)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path or path)
        options = {} if args.dtype == "auto" else {"dtype": getattr(torch, args.dtype)}
        # An explicit user file not written yet: start from the model's own users; the first addition writes it.
        users = user_file if user_file is not None and os.path.isfile(user_file) else None
        if users is None and args.population_only:
            users = False  # asked for: the users' weights were withheld from the model's upload
        model = AutoModel.from_pretrained(path, user_weights=users, **options)
        if is_peft_model(model):
            model = model.merge_and_unload()
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        reward = PersonalizedReward(
            model, tokenizer, batch_size=args.batch_size, max_length=args.max_length, device=device
        )
        fingerprint = locate_feature_head(path).fingerprint if user_file is not None else None
        return cls(reward, args.unknown_users, user_file, fingerprint)

    # ------------------------------------------------------------------ users
    @property
    def user_ids(self) -> list[str]:
        return list(self._users.rows)

    @property
    def num_features(self) -> int:
        return self.reward.rfm.config.num_features

    def _snapshot(self) -> _Users:
        with torch.no_grad():
            table = self.reward.rfm.user_weights().detach().float().to(self.reward.device)
        return _Users({uid: i for i, uid in enumerate(self.reward.rfm.user_ids)}, table)

    # ------------------------------------------------------------------ tokenisation (in the caller's thread)
    def tokenize_queries(self, queries: Sequence[str]) -> list[list[int]]:
        """Token ids of OpenRLHF queries ([`tokenize_query`]), truncated as the reward truncates."""
        try:
            with self._tokenizer_lock:
                sequences = [tokenize_query(self.reward.processing_class, query) for query in queries]
        except TOKENIZATION_ERRORS as error:
            raise RequestError(f"A query cannot be tokenised: {error}") from None
        return truncate_to_limit(sequences, self.reward.max_length, self.reward.rfm, "queries")

    def tokenize_pairs(self, prompts: Sequence, completions: Sequence) -> list[list[int]]:
        """Token ids of prompts + completions exactly as [`PersonalizedReward`] tokenises them."""
        try:
            with self._tokenizer_lock:
                return self.reward.tokenize(list(prompts), list(completions))
        except TOKENIZATION_ERRORS as error:
            raise RequestError(f"A prompt + completion cannot be tokenised: {error}") from None

    # ------------------------------------------------------------------ scoring
    def submit(self, sequences: list[list[int]], user_ids: list[str | None]) -> Future:
        """Queues tokenised sequences for scoring; the future's result is a [`ScoreResult`], or a
        [`UnknownUserError`] with `unknown_users="error"`."""
        if len(sequences) != len(user_ids):
            raise RequestError(f"{len(user_ids)} users for {len(sequences)} sequences.")
        if not sequences:  # nothing for the worker to do
            done = Future()
            done.set_result(ScoreResult([], []))
            return done
        return self._batcher.submit(sequences, user_ids)

    def score(self, prompts: Sequence, completions: Sequence, user_ids: Sequence) -> ScoreResult:
        """Rewards of prompts + completions for their users (blocking; thread-safe)."""
        if not len(prompts) == len(completions) == len(user_ids):
            raise RequestError(
                f"{len(prompts)} prompts, {len(completions)} completions and {len(user_ids)} user ids: one each per "
                "sample."
            )
        users = [normalize_request_user(u, f"user_ids[{i}]") for i, u in enumerate(user_ids)]
        return self.submit(self.tokenize_pairs(prompts, completions), users).result()

    def score_queries(self, queries: Sequence[str], labels: Sequence) -> ScoreResult:
        """Rewards of OpenRLHF queries for the users of their labels (blocking; thread-safe)."""
        if len(queries) != len(labels):
            raise RequestError(f"{len(queries)} queries for {len(labels)} labels: one label per query.")
        users = [user_of_label(label, i) for i, label in enumerate(labels)]
        return self.submit(self.tokenize_queries(queries), users).result()

    def _rows_of(self, users: _Users, user_ids: list[str | None]) -> list[int]:
        rows = [POPULATION_INDEX if u is None else users.rows.get(u, POPULATION_INDEX) for u in user_ids]
        if self.unknown_users == "error":
            unknown = sorted({u for u, row in zip(user_ids, rows) if u is not None and row == POPULATION_INDEX})
            if unknown:
                shown = ", ".join(repr(u) for u in unknown[:5])
                raise UnknownUserError(
                    f"Unknown user id(s) {shown}{' ...' if len(unknown) > 5 else ''}: the model knows "
                    f"{len(users.rows)} users and the server refuses others (--unknown_users error)."
                )
        return rows

    @torch.no_grad()
    def _run_batch(self, jobs: list[ScoreJob]) -> None:
        """One feature pass over the sequences of `jobs` (worker thread), then each row's `phi · w_u`."""
        users = self._users
        accepted, rows = [], []
        for job in jobs:
            try:
                job_rows = self._rows_of(users, job.user_ids)
            except UnknownUserError as error:
                job.future.set_exception(error)
                continue
            accepted.append(job)
            rows.extend(job_rows)
        if not accepted:
            return
        phi = self.reward.features_of_sequences([ids for job in accepted for ids in job.sequences])  # [N, d]
        table = users.table.to(phi.device)
        # As `PersonalizedReward.score`: the product summed in float32, the same arithmetic as in-process.
        rewards = (phi * table[torch.tensor(rows, device=phi.device)]).sum(dim=-1).cpu().tolist()
        population = (phi * table[POPULATION_INDEX]).sum(dim=-1).cpu().tolist()
        start = 0
        for job in accepted:
            end = start + len(job.sequences)
            job.future.set_result(ScoreResult(rewards[start:end], population[start:end]))
            start = end

    # ------------------------------------------------------------------ adding users
    def adapt(self, user_id: str, comparisons: list[dict]) -> Future:
        """Queues the fit of `user_id`'s weights on `comparisons` (TRL preference rows: `chosen`, `rejected`, optional
        `prompt`) with `adapt_users`' defaults (the model's prior), its addition to the model, and the atomic rewrite
        of the user file; on the worker thread, between passes. The future's result is an [`AdaptResult`]. If the
        file cannot be written, the model is left as it was."""
        if self.user_weights_file is None:
            raise RequestError(
                "Adaptation is disabled: this server has no user file to persist users to (--user_weights_file).",
                status_code=403,
            )
        dataset = comparisons_dataset(comparisons, user_id)
        return self._batcher.run_exclusive(lambda: self._adapt(user_id, dataset))

    @torch.no_grad()
    def _adapt(self, user_id: str, dataset) -> AdaptResult:
        rfm = self.reward.rfm
        replaced = rfm.has_user(user_id)
        previous = rfm.get_user_weights([user_id]).detach().clone() if replaced else None
        try:
            with self._tokenizer_lock:
                _, weights = adapt_users(
                    rfm,
                    self.reward.processing_class,
                    dataset,
                    batch_size=self.reward.batch_size,
                    max_length=self.reward.max_length,
                    show_progress=False,
                )
        except TOKENIZATION_ERRORS as error:
            raise RequestError(f"The comparisons cannot be used: {error}") from None
        try:
            saved_ids, saved_rows = self._with_user(user_id, weights[0])
            save_user_weights(self.user_weights_file, saved_ids, saved_rows, self.fingerprint)
        except BaseException:
            # Unwritten, the user must not be served either: a restart would lose them.
            if previous is None:
                rfm.remove_users([user_id])
            else:
                rfm.add_users([user_id], previous)
            raise
        self._saved_ids, self._saved_rows = saved_ids, saved_rows
        self._users = self._snapshot()
        return AdaptResult(user_id, replaced, len(dataset), len(self._users.rows))

    def _with_user(self, user_id: str, row: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        row = row.detach().to(device="cpu", dtype=self._saved_rows.dtype)
        if user_id in self._saved_ids:
            rows = self._saved_rows.clone()
            rows[self._saved_ids.index(user_id)] = row
            return list(self._saved_ids), rows
        return [*self._saved_ids, user_id], torch.cat([self._saved_rows, row[None]])

    def close(self) -> None:
        """Finishes the queued work and stops the worker thread."""
        self._batcher.close()


def comparisons_dataset(comparisons: list[dict], user_id: str):
    """A `datasets.Dataset` of one user's comparisons (`prompt` optional, `chosen`, `rejected`, all text or all
    conversations), with the `user_id` column `adapt_users` reads."""
    if not comparisons:
        raise RequestError("No comparisons: adapting a user needs at least one.")
    has_prompt = {"prompt" in c and c["prompt"] is not None for c in comparisons}
    kinds = {type(c[key]).__name__ for c in comparisons for key in ("prompt", "chosen", "rejected") if c.get(key)}
    if len(has_prompt) > 1 or len(kinds) > 1:
        raise RequestError(
            "The comparisons mix formats: all must have a `prompt` or none, and all be text or all conversations "
            "(lists of messages)."
        )
    columns = ("prompt", "chosen", "rejected") if has_prompt.pop() else ("chosen", "rejected")
    rows = [{**{key: c[key] for key in columns}, "user_id": user_id} for c in comparisons]
    try:
        return Dataset.from_list(rows)
    except (ValueError, TypeError) as error:  # Arrow's errors: messages whose fields differ from row to row
        raise RequestError(f"The comparisons cannot form a dataset: {error}") from None


def _tokenization_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, IndexError)
    try:  # a chat template that rejects the messages
        from jinja2.exceptions import TemplateError

        errors += (TemplateError,)
    except ImportError:
        pass
    return errors


TOKENIZATION_ERRORS = _tokenization_errors()

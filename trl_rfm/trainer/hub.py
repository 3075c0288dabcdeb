"""
Model card and Hub uploads of [`RFMRewardTrainer`] ([`RFMHubMixin`]): TRL's card with the Reward Feature Model's
sections, and uploads that leave the users' weights (personal data) out unless asked.
"""

import contextlib
import os

from accelerate.utils import is_peft_model

from ..io.hub import uploads_withholding_users
from ..io.model_card import build_model_card, personalize_model_card


class RFMHubMixin:
    """The model-card and Hub overrides of [`RFMRewardTrainer`]."""

    def _latest_eval_metrics(self) -> dict[str, float] | None:
        for entry in reversed(self.state.log_history):
            if "eval_accuracy" in entry:
                return entry
        return None

    def _card_options(self) -> dict:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return dict(
            is_adapter=is_peft_model(model),
            num_training_users=len(self._user_vocabulary),
            includes_user_weights=getattr(self, "_pushing_user_weights", None),
            eval_results=self._latest_eval_metrics(),
        )

    def _unwrapped_base_model(self):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model.get_base_model() if is_peft_model(model) else model

    def _build_model_card(self):
        hub_model_id = self.args.hub_model_id
        return build_model_card(
            self._unwrapped_base_model(),
            model_name=(hub_model_id or self.args.output_dir).rstrip("/").split("/")[-1],
            hub_model_id=hub_model_id,
            tags=list(self._tag_names),
            **self._card_options(),
        )

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, with the Reward Feature Model's metadata and sections (see `trl_rfm.io.model_card`)."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        from huggingface_hub import ModelCard

        card = personalize_model_card(
            ModelCard.load(path), self._unwrapped_base_model(), hub_model_id=self.hub_model_id, **self._card_options()
        )
        card.save(path)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        push_user_weights: bool = False,
        **kwargs,
    ):
        """
        `Trainer.push_to_hub`, except that the users' weights (`user_weights.safetensors`, personal data) are left out
        of the upload unless `push_user_weights=True`, and the uploaded `config.json` and model card say so: loading
        the repo then asks for `user_weights=False` (the population model, which adapts to new users) or the weights.
        The local `output_dir` keeps them.
        """
        exclusion = contextlib.nullcontext() if push_user_weights else uploads_withholding_users()
        self._pushing_user_weights = push_user_weights
        try:
            with exclusion:
                return super().push_to_hub(
                    commit_message=commit_message,
                    blocking=blocking,
                    token=token,
                    revision=revision,
                    private=private,
                    **kwargs,
                )
        finally:
            del self._pushing_user_weights

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Checkpoint uploads (`push_to_hub=True`, `hub_strategy`) never include user weights; publishing them is an
        # explicit `push_to_hub(push_user_weights=True)`.
        with uploads_withholding_users():
            super()._push_from_checkpoint(checkpoint_folder)

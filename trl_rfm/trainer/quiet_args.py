"""Training arguments for runs that are a step of something else (an evaluation's baselines, a test, a demo)."""


def quiet_training_args(config_class, **options):
    """`config_class(**options)` (an `RFMConfig`, `trl.RewardConfig`, ...) with no logging, no checkpoints, no
    progress bars, no reporting and float32 weights, unless `options` says otherwise: the caller reads the trained
    model, not the run's side effects."""
    defaults = dict(logging_strategy="no", save_strategy="no", report_to="none", bf16=False, disable_tqdm=True)
    return config_class(**{**defaults, **options})

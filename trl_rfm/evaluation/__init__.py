"""Evaluation of few-shot adaptation: the accuracy-vs-k protocol, the baselines, the harness, plots."""

from .harness import AdaptationEvaluationConfig, AdaptationEvaluationResult, evaluate_adaptation
from .protocol import (
    accuracy_vs_k,
    accuracy_vs_k_with_evidence_prior,
    draw_adaptation_sets,
    pairwise_accuracy,
    per_rater_accuracy,
    summarize_draws,
)

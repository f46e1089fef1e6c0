"""Evaluation metrics: distances, the CMC/mAP/mINP ranking protocol, k-reciprocal re-ranking, attribute mA.
Pure functions on arrays: features and labels come from ``evaluate``; the figures go to reports and study.json."""

from .attributes import mean_accuracy
from .distance import compute_distance
from .rank import RankResult, evaluate_rank, evaluate_rank_reference
from .rerank import re_ranking

__all__ = [
    "RankResult",
    "compute_distance",
    "evaluate_rank",
    "evaluate_rank_reference",
    "mean_accuracy",
    "re_ranking",
]

"""Evaluation metrics: distances, CMC/mAP/mINP ranking protocol, k-reciprocal re-ranking and
attribute mean accuracy."""

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

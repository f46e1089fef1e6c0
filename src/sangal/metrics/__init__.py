"""Evaluation metrics: distances, CMC/mAP/mINP ranking protocol and k-reciprocal re-ranking."""

from .distance import compute_distance
from .rank import RankResult, evaluate_rank, evaluate_rank_reference
from .rerank import re_ranking

__all__ = [
    "RankResult",
    "compute_distance",
    "evaluate_rank",
    "evaluate_rank_reference",
    "re_ranking",
]

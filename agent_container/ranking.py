"""How `memory_search` orders facts: a hybrid of vector and keyword rank, times salience.

    relevance(f) = W_VECTOR / (RRF_K + rank_vector(f)) + W_KEYWORD / (RRF_K + rank_keyword(f))
    salience(f)  = (1 + HIT_WEIGHT * ln(1 + hits(f)))
                 * (RECENCY_FLOOR + (1 - RECENCY_FLOOR) * 0.5 ** (age_days(f) / HALF_LIFE_DAYS))
    score(f)     = relevance(f) * salience(f)

`rank_vector` is the fact's 1-based place among the nearest vectors (cosine), `rank_keyword`
its place in the FTS5 BM25 order; a list the fact is not in adds nothing. Ranks, not raw
scores, are fused (reciprocal rank fusion): BM25 is unbounded and cosines of one embedding
model crowd into a narrow band, so a fixed blend of the two raw scores (0.7 x cosine +
0.3 x normalized BM25) lets whichever scale is wider decide, and a query made of one exact
identifier loses to paraphrases of its other words. `hits` counts how often the fact was
returned by a search; `age_days` is the time since it was saved or last merged, so a
corrected fact (saved again) outranks the stale one it contradicts. The salience factors
are bounded (recency between RECENCY_FLOOR and 1; hits grow logarithmically), so they
reorder facts of similar relevance but cannot lift an unrelated fact over a matching one.

tests/agent_container/test_memory.py measures this against the fixed blend on a small
labelled set; docs/agent-runtime.md has the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RRF_K = 10.0
W_VECTOR = 1.0
W_KEYWORD = 1.0
HIT_WEIGHT = 0.1
RECENCY_FLOOR = 0.5
HALF_LIFE_DAYS = 30.0
DAY_S = 86400.0


@dataclass(frozen=True)
class Candidate:
    """A fact found by either list: its ranks (1-based, None when absent) and its stats."""

    fact_id: int
    vector_rank: int | None
    keyword_rank: int | None
    cosine: float | None
    hits: int
    updated_at: float


def salience(hits: int, updated_at: float, now: float) -> float:
    age_days = max(0.0, now - updated_at) / DAY_S
    recency = RECENCY_FLOOR + (1 - RECENCY_FLOOR) * math.pow(0.5, age_days / HALF_LIFE_DAYS)
    return (1 + HIT_WEIGHT * math.log1p(max(0, hits))) * recency


def relevance(vector_rank: int | None, keyword_rank: int | None) -> float:
    score = 0.0
    if vector_rank is not None:
        score += W_VECTOR / (RRF_K + vector_rank)
    if keyword_rank is not None:
        score += W_KEYWORD / (RRF_K + keyword_rank)
    return score


def score(candidate: Candidate, now: float) -> float:
    return relevance(candidate.vector_rank, candidate.keyword_rank) * salience(
        candidate.hits, candidate.updated_at, now
    )


def rank(candidates: list[Candidate], now: float) -> list[tuple[Candidate, float]]:
    """Candidates best first, with their scores (ties: the newer fact first)."""
    scored = [(c, score(c, now)) for c in candidates]
    scored.sort(key=lambda pair: (-pair[1], -pair[0].updated_at, pair[0].fact_id))
    return scored

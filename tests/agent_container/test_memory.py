"""memory.db on its own (issue 11): hybrid ranking against a fixed blend on a labelled set,
near-duplicate merge, keyword-only facts filled in later, caps, inert keyword syntax.

The embeddings are the fake provider's (`tests.fakes.provider.embed`, hashed character
trigrams) at 384 dimensions, the vectors the runtime gets in the end-to-end tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent_container import memory as memory_module
from agent_container import ranking
from agent_container.memory import FACT_MAX_CHARS, MERGE_COSINE, Memory, MemoryProblem
from tests.agent_container.labelled_memory import DAY_S, FACTS, QUERIES
from tests.fakes.provider import embed

NOW = 1_800_000_000.0
DIM = 384
MODEL = "fake-embedding"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def vec(text: str) -> list[float]:
    return embed(text, DIM)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mem(tmp_path: Path, clock: Clock) -> Memory:
    m = Memory(tmp_path / "memory.db", clock=clock)
    yield m
    m.close()


def labelled(mem: Memory, clock: Clock) -> dict[int, str]:
    keys: dict[int, str] = {}
    for key, text, age in FACTS:
        clock.now = NOW - age * DAY_S
        keys[mem.save(text, None, vec(text), MODEL).id] = key
    clock.now = NOW
    return keys


def fixed_blend(mem: Memory, query: str) -> list[int]:
    """The baseline: 0.7 x cosine + 0.3 x BM25 (normalized by the best BM25 of the query),
    over the same candidates the memory's own search considers."""
    cosines = dict(mem._nearest(vec(query), 50))
    bm25: dict[int, float] = {}
    match = memory_module.keyword_query(query)
    if match:
        rows = mem.conn.execute(
            "SELECT rowid, -bm25(facts_fts) FROM facts_fts WHERE facts_fts MATCH ? "
            "ORDER BY rank LIMIT 50",
            (match,),
        )
        bm25 = {int(r): float(s) for r, s in rows}
    best = max(bm25.values(), default=1.0) or 1.0
    ids = set(cosines) | set(bm25)
    score = {i: 0.7 * cosines.get(i, 0.0) + 0.3 * bm25.get(i, 0.0) / best for i in ids}
    return sorted(ids, key=lambda i: -score[i])


def quality(orders: list[list[str]]) -> tuple[float, int]:
    """(mean reciprocal rank, hits at rank 1) of ranked keys against the labels."""
    mrr, first = 0.0, 0
    for order, (_, wanted) in zip(orders, QUERIES, strict=True):
        rank = order.index(wanted) + 1 if wanted in order else None
        mrr += 1 / rank if rank else 0.0
        first += rank == 1
    return mrr / len(QUERIES), first


def test_the_hybrid_rank_beats_a_fixed_blend_on_a_labelled_set(mem: Memory, clock: Clock) -> None:
    """issue 11: reciprocal rank fusion x salience against 0.7 x cosine + 0.3 x BM25."""
    keys = labelled(mem, clock)
    ours = [[keys[h.fact.id] for h in mem.search(q, 10, vec(q), MODEL)] for q, _ in QUERIES]
    blend = [[keys[i] for i in fixed_blend(mem, q)] for q, _ in QUERIES]
    ours_mrr, ours_first = quality(ours)
    blend_mrr, blend_first = quality(blend)
    print(f"hybrid: MRR {ours_mrr:.3f}, {ours_first}/{len(QUERIES)} at rank 1")
    print(f"fixed 0.7/0.3 blend: MRR {blend_mrr:.3f}, {blend_first}/{len(QUERIES)} at rank 1")
    assert ours_mrr > blend_mrr and ours_first > blend_first
    assert ours_first == len(QUERIES)  # every answer first, superseded facts included
    # the blend's misses are the superseded facts: it has no notion of which is newer
    missed = [
        wanted for order, (_, wanted) in zip(blend, QUERIES, strict=True) if order[0] != wanted
    ]
    assert missed and all(key.endswith("_new") for key in missed)


def test_salience_reorders_close_facts_but_cannot_lift_an_unrelated_one() -> None:
    old_match = ranking.Candidate(1, 1, 1, 0.9, 0, NOW - 365 * DAY_S)
    new_weak = ranking.Candidate(2, 6, None, 0.3, 50, NOW)
    ranked = ranking.rank([new_weak, old_match], NOW)
    assert [c.fact_id for c, _ in ranked] == [1, 2]
    # the bounds documented in ranking.py
    assert ranking.salience(0, NOW - 10_000 * DAY_S, NOW) == pytest.approx(ranking.RECENCY_FLOOR)
    assert ranking.salience(0, NOW, NOW) == pytest.approx(1.0)
    assert ranking.salience(100, NOW, NOW) == pytest.approx(1 + 0.1 * math.log(101))


def test_near_duplicates_merge_at_the_threshold_and_keep_the_old_text(
    mem: Memory, clock: Clock
) -> None:
    base = vec("The deploy target is the host alpha-7 in rack 3")
    first = mem.save("The deploy target is the host alpha-7 in rack 3", "infra", base, MODEL)
    # same words, other case and spacing: merged without looking at vectors
    again = mem.save("the deploy target is the host  ALPHA-7 in rack 3.", None, None, None)
    assert again.merged and again.id == first.id and again.similarity is None

    def rotated(start: list[float], cosine: float, towards: str) -> list[float]:
        """A unit vector at exactly `cosine` from `start`."""
        other = vec(towards)
        dot = sum(a * b for a, b in zip(start, other, strict=True))
        ortho = [o - dot * b for o, b in zip(other, start, strict=True)]
        norm = math.sqrt(sum(x * x for x in ortho))
        sine = math.sqrt(1 - cosine * cosine)
        return [cosine * b + sine * o / norm for b, o in zip(start, ortho, strict=True)]

    close = rotated(base, MERGE_COSINE + 0.01, "green tea and cats")
    near = mem.save("Deploys go to alpha-7 (rack 3)", None, close, MODEL)
    assert near.merged and near.id == first.id and near.similarity >= MERGE_COSINE
    far = rotated(close, MERGE_COSINE - 0.05, "a poem about the sea")
    apart = mem.save("Deploys of staging go to beta-2", None, far, MODEL)
    assert not apart.merged and apart.id != first.id
    assert mem.count() == 2
    history = [r[0] for r in mem.conn.execute("SELECT text FROM fact_history ORDER BY id")]
    assert history == [
        "The deploy target is the host alpha-7 in rack 3",
        "the deploy target is the host ALPHA-7 in rack 3.",
    ]
    (hit,) = mem.search("alpha-7", 1)
    assert hit.fact.text == "Deploys go to alpha-7 (rack 3)"


def test_facts_saved_without_a_vector_are_found_by_keyword_and_filled_in_later(
    mem: Memory,
) -> None:
    mem.save(
        "Miso is the name of the user's cat", None, vec("Miso is the name of the user's cat"), MODEL
    )
    mem.save("The user's dog is called Pretzel", "pet", None, None)  # the embedding failed
    assert [t for _, t in mem.pending()] == ["The user's dog is called Pretzel"]
    hits = mem.search("Pretzel", 5, vec("Pretzel"), MODEL)
    assert hits[0].fact.text == "The user's dog is called Pretzel"
    assert hits[0].cosine is None and hits[0].keyword
    ((fact_id, text),) = mem.pending()
    assert mem.fill([(fact_id, vec(text))], MODEL) == 1 and mem.pending() == []
    found = mem.search("dog called Pretzl", 5, vec("dog called Pretzl"), MODEL)  # a typo
    assert found[0].fact.id == fact_id and found[0].cosine is not None


def test_another_embedding_model_makes_the_stored_vectors_stale(mem: Memory) -> None:
    mem.save("The backup runs at 03:00 UTC", None, vec("The backup runs at 03:00 UTC"), MODEL)
    assert mem.pending() == []
    mem.save("The VPN expires in March", None, embed("The VPN expires in March", 64), "other")
    assert mem.vector_model() == ("other", 64)
    assert [t for _, t in mem.pending()] == ["The backup runs at 03:00 UTC"]
    # a query vector of the old model is not compared with the new ones
    hits = mem.search("backup", 5, vec("backup"), MODEL)
    assert hits and all(h.cosine is None for h in hits)


def test_caps_and_keyword_syntax_are_refused_or_inert(mem: Memory) -> None:
    with pytest.raises(MemoryProblem, match=f"at most {FACT_MAX_CHARS} characters"):
        mem.save("x" * (FACT_MAX_CHARS + 1))
    with pytest.raises(MemoryProblem, match="non-empty"):
        mem.save("   ")
    mem.save('The "quoted" value: NEAR(a b) OR x* AND -y', None, None, None)
    for query in ['"', "NEAR(", "a OR", "* ) ( ^", "-y", "x*", "' OR 1=1 --", "\x00"]:
        mem.search(query, 5)  # never an FTS5 syntax error
    assert mem.search("quoted NEAR", 5)[0].fact.text.startswith('The "quoted"')


def test_search_hits_count_toward_salience_and_are_written_with_the_next_save(
    mem: Memory, clock: Clock
) -> None:
    a = mem.save("The lunch place on Mondays is Nori", None, None, None)
    mem.save("The lunch place on Fridays is Basil", None, None, None)
    for _ in range(3):
        assert mem.search("lunch Mondays Nori", 1)[0].fact.id == a.id
    stored = mem.conn.execute("SELECT hits FROM facts WHERE id = ?", (a.id,)).fetchone()[0]
    assert stored == 0  # counted in memory: a search never waits for a disk sync
    mem.save("Something else entirely", None, None, None)
    stored = mem.conn.execute("SELECT hits FROM facts WHERE id = ?", (a.id,)).fetchone()[0]
    assert stored == 3
    # the often-used fact now wins the tie of a query both match equally
    assert mem.search("lunch place", 2)[0].fact.id == a.id


def test_the_prefilter_path_finds_what_the_exact_scan_finds(
    mem: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [
        f"note {n}: the {w} report for week {n % 52}"
        for n, w in enumerate(["sales", "ops", "security", "hiring", "budget", "latency"] * 40)
    ]
    for t in texts:
        mem.save(t, None, vec(t), MODEL)
    query = vec("the security report for week 14")
    exact = [i for i, _ in mem._nearest(query, 5)]
    monkeypatch.setattr(memory_module, "EXACT_MAX", 10)  # over it: Hamming prefilter + rescore
    assert [i for i, _ in mem._nearest(query, 5)][:1] == exact[:1]

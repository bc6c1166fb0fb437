"""The agent's long-term memory: `memory.db` in its volume (SQLite + sqlite-vec + FTS5).

One row per fact, a BM25 full-text index of the facts (FTS5, porter stemming) and one
embedding per fact: float32 for exact cosine, and its sign bits in a sqlite-vec `vec0`
table for a fast Hamming prefilter. The SQLite is apsw's own build, which loads the
sqlite-vec extension on any CPython (the image carries both).

* Vector search (a candidate needs a cosine of at least MIN_COSINE): an exact cosine scan
  while the memory holds at most EXACT_MAX vectors; above that, the nearest by Hamming
  distance of the sign bits (vec0's KNN) are rescored by exact cosine. vec0's KNN costs
  about vectors x k, so the bits are spread over PARTITIONS partitions (fact id modulo)
  and each gives its PREFILTER_PER_PART nearest: PARTITIONS x PREFILTER_PER_PART
  candidates for the price of one KNN with a small k (recall against the exact scan is
  measured in bench/memory_search.py).
* Near-duplicates are merged, not piled up: a fact whose embedding has a cosine of at
  least MERGE_COSINE with a stored one, or whose normalized text equals one, replaces that
  fact's text (the old text is kept in `fact_history`), refreshes its age and counts a merge.
* Facts saved without a vector (the embedding call failed) are marked and get their vector
  later (`pending` / `fill`); until then only the keyword index finds them.
* One embedding model per memory: a vector of another model or dimension makes every
  stored vector stale; they are dropped and refilled (keyword search meanwhile).
* Search hits (results scoring at least HIT_SHARE of the best) are counted in memory and
  written with the next save (or `flush`), so a search never waits for a disk sync; a
  crash loses at most those counts.

Ranking: `agent_container.ranking`. All calls are short and synchronous (milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_container import ranking

FACT_MAX_CHARS = 2000
CATEGORY_MAX_CHARS = 40
MERGE_COSINE = 0.95
# Vector candidates below this cosine are not candidates at all: without it the nearest
# vectors of a query about nothing stored would still come back as "matches".
MIN_COSINE = 0.1
EXACT_MAX = 4096
PARTITIONS = 8
PREFILTER_PER_PART = 12
CANDIDATES = 50
SEARCH_K_MAX = 20
KEYWORD_TERMS_MAX = 24
# Keyword terms in more than this share of the facts are dropped (see Memory._common).
COMMON_SHARE = 0.1
COMMON_MIN = 1000
HIT_FLUSH_S = 30.0
CACHE_KIB = 16 * 1024
MMAP_BYTES = 256 * 1024 * 1024
# A returned fact counts as used (a hit, for salience) when its score is at least this
# share of the best one: the tail of a long result list is not what the search was about.
HIT_SHARE = 0.5
# Words that match nearly every fact: dropped from the keyword query (they cost a long
# posting list and add nothing to BM25's order).
_STOPWORDS = (
    "a an and are as at be by did do does for from had has have how i in is it its me "
    "my of on or our so that the their them there these they this to was we were what "
    "when where which who why will with you your"
)
STOPWORDS = frozenset(_STOPWORDS.split())
_WORD = re.compile(r"\w+")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS facts (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    norm TEXT NOT NULL,
    category TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    merges INTEGER NOT NULL DEFAULT 0,
    needs_vector INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS facts_norm ON facts(norm);
CREATE INDEX IF NOT EXISTS facts_pending ON facts(id) WHERE needs_vector = 1;
CREATE VIRTUAL TABLE IF NOT EXISTS facts_fts USING fts5(
    text, content='facts', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS facts_ai AFTER INSERT ON facts BEGIN
    INSERT INTO facts_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS facts_ad AFTER DELETE ON facts BEGIN
    INSERT INTO facts_fts(facts_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER IF NOT EXISTS facts_au AFTER UPDATE OF text ON facts BEGIN
    INSERT INTO facts_fts(facts_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO facts_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE VIRTUAL TABLE IF NOT EXISTS facts_terms USING fts5vocab(facts_fts, 'row');
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS fact_history (
    id INTEGER PRIMARY KEY,
    fact_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    replaced_at REAL NOT NULL
);
"""


class MemoryProblem(Exception):
    """A fact the memory refuses (empty, too long) or a memory.db that cannot be used."""


@dataclass(frozen=True)
class Fact:
    id: int
    text: str
    category: str
    created_at: float
    updated_at: float
    hits: int


@dataclass(frozen=True)
class Hit:
    fact: Fact
    score: float
    cosine: float | None
    keyword: bool


@dataclass(frozen=True)
class Saved:
    id: int
    merged: bool
    previous: str | None = None
    similarity: float | None = None


def normalize(text: str) -> str:
    """The text compared for exact duplicates: case-folded, whitespace collapsed, no final dot."""
    return " ".join(text.casefold().split()).rstrip(" .!;")


def query_terms(text: str) -> list[str]:
    """The query's words, lower-cased, without stopwords or repeats (at most 24)."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word not in STOPWORDS and word not in terms:
            terms.append(word)
        if len(terms) >= KEYWORD_TERMS_MAX:
            break
    return terms


def keyword_query(text: str, drop: frozenset[str] = frozenset()) -> str | None:
    """An FTS5 query OR-ing the query's words (each quoted: no FTS syntax gets through)."""
    terms = [t for t in query_terms(text) if t not in drop]
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def pack(vector: list[float]) -> bytes:
    return struct.pack(f"{len(vector)}f", *vector)


class Memory:
    """memory.db of one agent. Open lazily; every method is short and synchronous."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._conn: Any = None
        self._vectors = 0
        self._bits: bool | None = None  # whether the vec0 table of sign bits exists
        self._hits: Counter[int] = Counter()
        self._hits_since = 0.0

    # --- connection -------------------------------------------------------------------

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> Any:
        import apsw
        import sqlite_vec

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = apsw.Connection(str(self.path))
            conn.set_busy_timeout(5000)
            conn.enable_load_extension(True)
            conn.load_extension(sqlite_vec.loadable_path())
            conn.enable_load_extension(False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # The sign bits and the hot index pages stay in SQLite's own cache; the rest is
            # read through a memory map (no read() per page; the kernel may drop it).
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            with conn:
                conn.execute(SCHEMA)
            row = conn.execute("SELECT count(*) FROM vectors").fetchone()
            self._vectors = int(row[0]) if row else 0
            self._hits_since = self.clock()
        except apsw.Error as exc:
            raise MemoryProblem(
                f"{self.path} cannot be used ({exc.__class__.__name__}: {exc}); move it aside "
                "and the agent starts a new memory"
            ) from None
        return conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self.flush()
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction that also carries the search hits counted since the last one."""
        conn = self.conn
        with conn:
            self._write_hits(conn)
            yield conn

    def _write_hits(self, conn: Any) -> None:
        if self._hits:
            conn.executemany(
                "UPDATE facts SET hits = hits + ? WHERE id = ?",
                [(n, fact_id) for fact_id, n in self._hits.items()],
            )
            self._hits.clear()
        self._hits_since = self.clock()

    def flush(self) -> None:
        """Write the counted search hits now."""
        if self._hits:
            with self.conn as conn:
                self._write_hits(conn)

    # --- meta: which embedding model the vectors are of ------------------------------

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def vector_model(self) -> tuple[str | None, int | None]:
        dim = self._meta("dim")
        return self._meta("model"), int(dim) if dim else None

    def _accept(self, conn: Any, model: str, dim: int) -> None:
        """Make `model`/`dim` the memory's embedding; stale vectors are dropped for refill."""
        if self.vector_model() == (model, dim):
            return
        conn.execute("DELETE FROM vectors")
        conn.execute("DROP TABLE IF EXISTS vector_bits")
        if dim % 8 == 0:  # a bit vector is whole bytes; otherwise exact scans only
            conn.execute(
                "CREATE VIRTUAL TABLE vector_bits USING vec0("
                f"part INTEGER PARTITION KEY, bits bit[{int(dim)}])"
            )
        self._bits = None
        conn.execute("UPDATE facts SET needs_vector = 1")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?), ('dim', ?)", (model, dim))
        self._vectors = 0

    def _has_bits(self) -> bool:
        if self._bits is None:
            row = self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'vector_bits'"
            ).fetchone()
            self._bits = row is not None
        return self._bits

    def _matches(self, model: str, dim: int) -> bool:
        return self.vector_model() == (model, dim)

    def _store_vector(self, conn: Any, fact_id: int, vector: list[float]) -> None:
        blob = pack(vector)
        existed = conn.execute("SELECT 1 FROM vectors WHERE id = ?", (fact_id,)).fetchone()
        conn.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?)", (fact_id, blob))
        if self._has_bits():
            conn.execute("DELETE FROM vector_bits WHERE rowid = ?", (fact_id,))
            conn.execute(
                "INSERT INTO vector_bits(rowid, part, bits) VALUES (?, ?, vec_quantize_binary(?))",
                (fact_id, fact_id % PARTITIONS, blob),
            )
        conn.execute("UPDATE facts SET needs_vector = 0 WHERE id = ?", (fact_id,))
        if existed is None:
            self._vectors += 1

    # --- save ------------------------------------------------------------------------------

    def save(
        self,
        text: str,
        category: str | None = None,
        vector: list[float] | None = None,
        model: str | None = None,
    ) -> Saved:
        """Store a fact, or merge it into its near-duplicate."""
        text = " ".join(text.split()) if "\n" not in text else text.strip()
        if not text:
            raise MemoryProblem("memory_save needs a non-empty text")
        if len(text) > FACT_MAX_CHARS:
            raise MemoryProblem(
                f"a fact is at most {FACT_MAX_CHARS} characters (this one has {len(text)}); "
                "save the essential part, or several facts"
            )
        category = (category or "note").strip()[:CATEGORY_MAX_CHARS] or "note"
        if model is None:
            vector = None  # a vector of no known model cannot be compared with any
        norm = normalize(text)
        now = self.clock()
        with self._write() as conn:
            if vector is not None and model is not None:
                self._accept(conn, model, len(vector))
            twin = conn.execute("SELECT id, text FROM facts WHERE norm = ?", (norm,)).fetchone()
            similarity: float | None = None
            if twin is None and vector is not None:
                nearest = self._nearest(vector, 1)
                if nearest and nearest[0][1] >= MERGE_COSINE:
                    similarity = nearest[0][1]
                    twin = conn.execute(
                        "SELECT id, text FROM facts WHERE id = ?", (nearest[0][0],)
                    ).fetchone()
            if twin is not None:
                fact_id, previous = int(twin[0]), str(twin[1])
                if previous != text:
                    conn.execute(
                        "INSERT INTO fact_history(fact_id, text, replaced_at) VALUES (?, ?, ?)",
                        (fact_id, previous, now),
                    )
                conn.execute(
                    "UPDATE facts SET text = ?, norm = ?, category = ?, updated_at = ?, "
                    "merges = merges + 1 WHERE id = ?",
                    (text, norm, category, now, fact_id),
                )
                if vector is not None:
                    self._store_vector(conn, fact_id, vector)
                return Saved(fact_id, True, previous, similarity)
            conn.execute(
                "INSERT INTO facts(text, norm, category, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (text, norm, category, now, now),
            )
            fact_id = int(conn.last_insert_rowid())
            if vector is not None:
                self._store_vector(conn, fact_id, vector)
            return Saved(fact_id, False)

    def pending(self, limit: int = 32) -> list[tuple[int, str]]:
        """Facts still waiting for their vector (oldest first)."""
        rows = self.conn.execute(
            "SELECT id, text FROM facts WHERE needs_vector = 1 ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [(int(i), str(t)) for i, t in rows]

    def fill(self, vectors: list[tuple[int, list[float]]], model: str) -> int:
        """Store vectors computed later for pending facts; returns how many were stored."""
        if not vectors:
            return 0
        with self._write() as conn:
            self._accept(conn, model, len(vectors[0][1]))
            stored = 0
            for fact_id, vector in vectors:
                if conn.execute("SELECT 1 FROM facts WHERE id = ?", (fact_id,)).fetchone():
                    self._store_vector(conn, fact_id, vector)
                    stored += 1
        return stored

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM facts").fetchone()[0])

    # --- search ----------------------------------------------------------------------------

    def _nearest(self, vector: list[float], n: int) -> list[tuple[int, float]]:
        """(fact id, cosine) of the `n` nearest stored vectors, best first."""
        if self._vectors == 0:
            return []
        blob = pack(vector)
        if self._vectors <= EXACT_MAX or not self._has_bits():
            rows = self.conn.execute(
                "SELECT id, vec_distance_cosine(vec, ?1) AS d FROM vectors ORDER BY d LIMIT ?2",
                (blob, n),
            ).fetchall()
        else:
            bits = self.conn.execute("SELECT vec_quantize_binary(?)", (blob,)).fetchone()[0]
            k = max(PREFILTER_PER_PART, -(-n // PARTITIONS))
            ids = [
                r[0]
                for part in range(PARTITIONS)
                for r in self.conn.execute(
                    "SELECT rowid FROM vector_bits WHERE bits MATCH vec_bit(?) AND k = ? "
                    "AND part = ?",
                    (bits, k, part),
                )
            ]
            rows = self.conn.execute(
                "SELECT id, vec_distance_cosine(vec, ?1) AS d FROM vectors "
                "WHERE id IN (SELECT value FROM json_each(?2)) ORDER BY d LIMIT ?3",
                (blob, json.dumps(ids), n),
            ).fetchall()
        found = [(int(i), 1.0 - float(d)) for i, d in rows if d is not None]
        return [(i, c) for i, c in found if c >= MIN_COSINE]

    def _common(self, terms: list[str]) -> frozenset[str]:
        """Terms found in more than COMMON_SHARE of the facts (once there are COMMON_MIN):
        they cost a long posting list and weigh almost nothing in BM25. The rarest term
        of the query is always kept."""
        facts = self._facts_count()
        if facts < COMMON_MIN or not terms:
            return frozenset()
        marks = ",".join("?" * len(terms))
        rows = self.conn.execute(
            f"SELECT term, doc FROM facts_terms WHERE term IN ({marks})", terms
        ).fetchall()
        docs = {str(t): int(d) for t, d in rows}
        common = {t for t, d in docs.items() if d > COMMON_SHARE * facts}
        if common and common >= set(terms):
            common.discard(min(terms, key=lambda t: docs.get(t, 0)))
        return frozenset(common)

    def _facts_count(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM facts").fetchone()
        return int(row[0] or 0) if row else 0

    def _keyword(self, query: str, n: int) -> list[int]:
        match = keyword_query(query, self._common(query_terms(query)))
        if match is None:
            return []
        rows = self.conn.execute(
            "SELECT rowid FROM facts_fts WHERE facts_fts MATCH ? ORDER BY rank LIMIT ?",
            (match, n),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def search(
        self,
        query: str,
        k: int = 5,
        vector: list[float] | None = None,
        model: str | None = None,
    ) -> list[Hit]:
        """The `k` best facts for `query` (hybrid rank, see agent_container.ranking).

        Without a vector (or with one of another model than the stored ones) only the
        keyword index is used.
        """
        k = max(1, min(k, SEARCH_K_MAX))
        n = max(CANDIDATES, 5 * k)
        usable = vector is not None and model is not None and self._matches(model, len(vector))
        near = self._nearest(vector, n) if usable and vector is not None else []
        words = self._keyword(query, n)
        vector_rank = {fact_id: i for i, (fact_id, _) in enumerate(near, 1)}
        cosines = dict(near)
        keyword_rank = {fact_id: i for i, fact_id in enumerate(words, 1)}
        ids = list(dict.fromkeys([*vector_rank, *keyword_rank]))
        if not ids:
            return []
        facts = {
            int(row[0]): Fact(
                int(row[0]), str(row[1]), str(row[2]), float(row[3]), float(row[4]), int(row[5])
            )
            for row in self.conn.execute(
                "SELECT id, text, category, created_at, updated_at, hits FROM facts "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
        }
        now = self.clock()
        candidates = [
            ranking.Candidate(
                fact_id,
                vector_rank.get(fact_id),
                keyword_rank.get(fact_id),
                cosines.get(fact_id),
                facts[fact_id].hits + self._hits[fact_id],
                facts[fact_id].updated_at,
            )
            for fact_id in ids
            if fact_id in facts
        ]
        ranked = ranking.rank(candidates, now)[:k]
        best = ranked[0][1] if ranked else 0.0
        for candidate, value in ranked:
            if value >= HIT_SHARE * best:  # a hit is a fact the search was about
                self._hits[candidate.fact_id] += 1
        if self._hits and now - self._hits_since > HIT_FLUSH_S:
            self.flush()
        return [Hit(facts[c.fact_id], s, c.cosine, c.keyword_rank is not None) for c, s in ranked]

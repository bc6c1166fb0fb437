"""Agent memory: `memory_search` latency at 10k and 100k stored facts (384-dim embeddings).

What is timed is `Memory.search` as the memory_search tool runs it once the query's
embedding is known: the vector candidates (exact cosine scan up to EXACT_MAX vectors,
else vec0's Hamming KNN on sign bits rescored by exact cosine), the FTS5 BM25 list, the
fact rows, the fusion and salience. The floor, in the same run: a brute-force scan of the
same vectors for the top 5 by cosine, with numpy when it is installed (else in pure
Python, named as such). Targets: p95 <= 10 ms at 10k facts, <= 15 ms at 100k.

Also printed: the vector recall@5 of the search against the exact top 5.

The facts are synthetic: clustered unit vectors (200 centres) and texts drawn from a
5,000-word vocabulary, bulk-loaded into the memory's own schema. All on local disk.
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Report, heading, line, percentile, run_alone

DIM = 384
MODEL = "bench-embedding"
TARGETS_MS = {10_000: 10.0, 100_000: 15.0}
CENTRES = 200
NOISE_BANK = 512


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def make_vectors(count: int, rng: random.Random) -> list[list[float]]:
    """Clustered unit vectors: a centre plus two noise vectors from a bank (fast to make)."""
    centres = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(CENTRES)]
    bank = [[rng.gauss(0, 0.7) for _ in range(DIM)] for _ in range(NOISE_BANK)]
    out = []
    for _ in range(count):
        c, a, b = rng.choice(centres), rng.choice(bank), rng.choice(bank)
        out.append(_unit([x + y + z for x, y, z in zip(c, a, b, strict=True)]))
    return out


def make_texts(count: int, rng: random.Random) -> tuple[list[str], list[str]]:
    vocab = [f"w{n}" for n in range(5000)]
    weights = [1 / (n + 1) for n in range(len(vocab))]
    texts = [f"fact {n}: " + " ".join(rng.choices(vocab, weights, k=12)) for n in range(count)]
    return texts, vocab


def load(path: Path, texts: list[str], vectors: list[list[float]]) -> None:
    """Bulk-load facts into memory.db with the memory's own schema and layout."""
    from agent_container.memory import PARTITIONS, Memory, normalize, pack

    memory = Memory(path)
    conn = memory.conn
    now = time.time()
    with conn:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?), ('dim', ?)", (MODEL, DIM))
        conn.executemany(
            "INSERT INTO facts(id, text, norm, category, created_at, updated_at, needs_vector) "
            "VALUES (?, ?, ?, 'note', ?, ?, 0)",
            [(i + 1, t, normalize(t), now - i * 60.0, now - i * 60.0) for i, t in enumerate(texts)],
        )
        blobs = [(i + 1, pack(v)) for i, v in enumerate(vectors)]
        conn.executemany("INSERT INTO vectors VALUES (?, ?)", blobs)
        conn.execute(
            "CREATE VIRTUAL TABLE vector_bits USING vec0("
            f"part INTEGER PARTITION KEY, bits bit[{DIM}])"
        )
        conn.executemany(
            "INSERT INTO vector_bits(rowid, part, bits) VALUES (?, ?, vec_quantize_binary(?))",
            [(i, i % PARTITIONS, b) for i, b in blobs],
        )
    memory.close()


def floor_scan(vectors: Any, query: list[float], numpy: Any) -> tuple[float, list[int]]:
    """Seconds and top-5 ids (1-based) of a brute-force cosine scan (unit vectors: dot)."""
    if numpy is not None:
        q = numpy.asarray(query, dtype=numpy.float32)
        started = time.perf_counter()
        scores = vectors @ q
        top = numpy.argpartition(-scores, 5)[:5]
        top = top[numpy.argsort(-scores[top])]
        return time.perf_counter() - started, [int(i) + 1 for i in top]
    started = time.perf_counter()
    scores = [sum(a * b for a, b in zip(v, query, strict=True)) for v in vectors]
    top = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:5]
    return time.perf_counter() - started, [i + 1 for i in top]


def one_size(count: int, queries: int, report: Report, rng: random.Random) -> None:
    from agent_container.memory import Memory

    # One thread, like the search itself: the floor is a single-core scan.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        import numpy
    except ImportError:
        numpy = None
    heading(f"memory_search, {count:,} facts of {DIM}-dim embeddings")
    started = time.perf_counter()
    vectors = make_vectors(count, rng)
    texts, vocab = make_texts(count, rng)
    with tempfile.TemporaryDirectory(prefix="lgb-mem-") as tmp:
        path = Path(tmp) / "memory.db"
        load(path, texts, vectors)
        line(f"built in {time.perf_counter() - started:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
        picks = [rng.randrange(count) for _ in range(queries)]
        qvecs = [_unit([x + rng.gauss(0, 0.03) for x in vectors[i]]) for i in picks]
        qtexts = [" ".join(rng.choices(vocab[:2000], k=3)) for _ in picks]
        memory = Memory(path)
        memory.search(qtexts[0], 5, qvecs[0], MODEL)  # warm: open, page cache
        samples: list[float] = []
        recall = 0.0
        floor_samples: list[float] = []
        matrix = numpy.asarray(vectors, dtype=numpy.float32) if numpy is not None else vectors
        floor_queries = queries if numpy is not None else min(queries, 5)
        # Three passes, so neither evicts the other's data from the CPU caches mid-pass.
        cpu: list[float] = []
        for qt, qv in zip(qtexts, qvecs, strict=True):
            t0, c0 = time.perf_counter(), time.thread_time()
            memory.search(qt, 5, qv, MODEL)
            samples.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        exacts = []
        for qv in qvecs[:floor_queries]:
            took, exact = floor_scan(matrix, qv, numpy)
            floor_samples.append(took)
            exacts.append(exact)
        for qv, exact in zip(qvecs, exacts, strict=False):
            found = [i for i, _ in memory._nearest(qv, 5)]
            recall += len(set(found) & set(exact)) / 5
        memory.close()
    p50, p95, p99 = (percentile(samples, q) * 1e3 for q in (50, 95, 99))
    cpu50, cpu95 = (percentile(cpu, q) * 1e3 for q in (50, 95))
    floor_p50 = percentile(floor_samples, 50) * 1e3
    floor_p95 = percentile(floor_samples, 95) * 1e3
    kind = "numpy" if numpy is not None else "pure Python (numpy is not installed)"
    line(
        f"memory_search:        p50 {p50:.2f} ms  p95 {p95:.2f} ms  p99 {p99:.2f} ms  (n={queries})"
    )
    line(
        f"  its CPU time:       p50 {cpu50:.2f} ms  p95 {cpu95:.2f} ms  (wall minus waiting "
        f"for a core; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    line(
        f"floor, {kind} brute-force top 5: p50 {floor_p50:.2f} ms  p95 {floor_p95:.2f} ms  "
        f"(n={len(floor_samples)})"
    )
    line(f"ratio to the floor (p95): {p95 / floor_p95:.2f}x")
    line(f"vector recall@5 against the exact scan: {recall / max(1, floor_queries):.3f}")
    target = TARGETS_MS[count]
    report.check(
        f"memory_search p95 at {count // 1000}k facts",
        p95 <= target,
        f"{p95:.2f} ms (target <= {target:.0f} ms; floor {floor_p95:.2f} ms, {kind})",
    )


def run(quick: bool = False, profile: bool = False) -> Report:
    report = Report("memory_search")
    rng = random.Random(11)
    sizes = [10_000] if quick else [10_000, 100_000]
    for count in sizes:
        one_size(count, 60 if quick else 300, report, rng)
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "memory_search"))

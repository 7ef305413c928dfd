"""The review database: creation, reopening, schema checks, concurrent writers, a writer killed mid-transaction."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hematovision.review import store as review
from hematovision.review.store import UNUSABLE, ReviewDBError, ReviewStore
from hematovision.serving.classifier import Prediction

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def _pred(name: str, sha: str, cls: str = "lymphocyte", conf: float = 0.4, flagged: bool = True) -> Prediction:
    probs = [0.2, 0.2, 0.2, 0.2]
    probs[CLASSES.index(cls)] = conf
    return Prediction(name, cls, conf, tuple(probs), flagged, "", sha)


def _spawn(code: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=REPO, **kw)


def test_created_on_first_use_with_wal_and_schema_version(tmp_path):
    path = tmp_path / "deep" / "er" / "reviews.sqlite3"
    store = ReviewStore(path)
    assert path.is_file() and store.path == path.resolve()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == review.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"items", "decisions"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert store.items() == [] and store.current() == {} and store.integrity() == "ok"


def test_path_argument_then_env_then_user_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(review.DB_ENV, raising=False)
    monkeypatch.setenv("HEMATOVISION_HOME", str(tmp_path / "home"))
    assert review.db_path() == tmp_path / "home" / "reviews.sqlite3"
    monkeypatch.setenv(review.DB_ENV, str(tmp_path / "env.db"))
    assert review.db_path() == tmp_path / "env.db"
    assert review.db_path(tmp_path / "arg.db") == tmp_path / "arg.db"


def test_decisions_are_an_audit_trail_and_survive_a_restart(tmp_path):
    path = tmp_path / "r.db"
    store = ReviewStore(path)
    assert (
        store.queue(
            [_pred("a.png", "aa"), _pred("b.png", "bb", "monocyte"), Prediction("bad.png", error="x")],
            CLASSES,
            "m@1",
            thumbnails={"aa": b"PNG-bytes"},
            threshold=0.9,
        )
        == 2
    )
    store.decide("aa", "m@1", "lymphocyte", "ann")
    store.decide("aa", "m@1", "neutrophil", "bob", "granules")
    store.decide("bb", "m@1", UNUSABLE, "ann", "smudge")
    with pytest.raises(ValueError, match="not one of"):
        store.decide("aa", "m@1", "basophil", "ann")
    with pytest.raises(ValueError, match="no prediction queued"):
        store.decide("zz", "m@1", "lymphocyte")

    # a "restart": a new process opens the same file
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hematovision.review.store import ReviewStore; "
            "s = ReviewStore(sys.argv[1]); print([(i.file, i.status, i.final_class) for i in s.items()])",
            str(path),
        ],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[('a.png', 'reclassified', 'neutrophil'), ('b.png', 'unusable', 'unusable')]"

    again = ReviewStore(path)
    assert [(d.reviewer, d.reviewed_class, d.action) for d in again.history("aa", "m@1")] == [
        ("ann", "lymphocyte", "confirmed"), ("bob", "neutrophil", "reclassified")]
    assert again.current()[("aa", "m@1")].note == "granules"
    assert again.thumbnail("aa", "m@1") == b"PNG-bytes" and again.thumbnail("bb", "m@1") is None
    # re-queuing keeps the thumbnail and the flag
    again.queue([_pred("a2.png", "aa", flagged=False)], CLASSES, "m@1")
    it = next(i for i in again.items() if i.sha256 == "aa")
    assert it.flagged and it.file == "a2.png" and again.thumbnail("aa", "m@1") == b"PNG-bytes"
    # an image not queued can be reviewed when its prediction is given (Classify page's detail view)
    again.decide("cc", "m@2", "monocyte", predicted_class="monocyte", classes=CLASSES)
    frame = again.export_frame()
    assert len(frame) == 4 and frame["current"].tolist() == [False, True, True, True]
    assert frame["final_class"].tolist() == ["lymphocyte", "neutrophil", UNUSABLE, "monocyte"]
    assert "decision_id,reviewed_at,file" in review.export_csv(again)


def test_newer_or_foreign_schema_is_refused_untouched(tmp_path):
    newer = tmp_path / "newer.db"
    ReviewStore(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {review.SCHEMA_VERSION + 1}")
    before = newer.read_bytes()
    with pytest.raises(ReviewDBError, match="newer than this HematoVision"):
        ReviewStore(newer)
    assert newer.read_bytes() == before

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER)")
    with pytest.raises(ReviewDBError, match="not a HematoVision review database"):
        ReviewStore(foreign)

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReviewDBError, match="not a SQLite database"):
        ReviewStore(junk)


WRITER = """
    import sys, time
    from pathlib import Path
    from hematovision.review.store import ReviewStore
    db, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    store = ReviewStore(db)
    while not go.exists():
        time.sleep(0.005)
    for k in range(n):
        store.decide(f"{tag}-{k}", "m@1", "lymphocyte", tag, predicted_class="monocyte")
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    db, go, n = tmp_path / "r.db", tmp_path / "go", 150
    ReviewStore(db)
    procs = [_spawn(WRITER, str(db), tag, str(n), str(go)) for tag in ("p1", "p2")]
    time.sleep(1.0)  # both imported and waiting
    t0 = time.monotonic()
    go.touch()
    assert [p.wait(120) for p in procs] == [0, 0]
    elapsed = time.monotonic() - t0
    hist = ReviewStore(db).history()
    assert len(hist) == 2 * n, f"{len(hist)} rows after {elapsed:.1f} s"
    assert {d.sha256 for d in hist} == {f"{t}-{k}" for t in ("p1", "p2") for k in range(n)}
    switches = sum(a.reviewer != b.reviewer for a, b in zip(hist, hist[1:]))
    assert ReviewStore(db).integrity() == "ok"
    print(f"{2 * n} decisions from 2 processes in {elapsed:.2f} s, writers alternated {switches} times")


def test_a_writer_waits_and_retries_past_a_held_lock(tmp_path, monkeypatch):
    """Beyond SQLite's own busy timeout, ``database is locked`` is retried (with back-off) until the lock goes."""
    import threading

    monkeypatch.setattr(review, "BUSY_TIMEOUT_MS", 20)  # so the retry loop, not the busy handler, does the waiting
    store = ReviewStore(tmp_path / "r.db")
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute(
        "INSERT INTO decisions (sha256, model_version, predicted_class, reviewed_class, reviewer, note, reviewed_at) "
        "VALUES ('held', 'm@1', 'monocyte', 'monocyte', 'other', '', 'now')"
    )
    done = []
    t = threading.Thread(
        target=lambda: done.append(store.decide("mine", "m@1", "monocyte", predicted_class="monocyte"))
    )
    t0 = time.monotonic()
    t.start()
    time.sleep(0.6)
    assert not done  # still waiting for the lock
    holder.execute("COMMIT")
    holder.close()
    t.join(10)
    assert done and time.monotonic() - t0 >= 0.6
    assert [d.sha256 for d in store.history()] == ["held", "mine"]


KILLED = """
    import sys, time
    from pathlib import Path
    from hematovision.review.store import ReviewStore
    db, n, ready = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    store = ReviewStore(db)
    for k in range(n):
        store.decide(f"done-{k}", "m@1", "neutrophil", "killed", predicted_class="neutrophil")
    with store.transaction() as conn:
        conn.execute("INSERT INTO decisions (sha256, model_version, predicted_class, reviewed_class, reviewer, note, "
                     "reviewed_at) "
                     "VALUES ('uncommitted', 'm@1', 'monocyte', 'monocyte', 'killed', '', 'now')")
        for k in range(200):  # a big uncommitted write: some of it spills into the WAL
            conn.execute(
                "INSERT INTO items (sha256, model_version, file, predicted_class, confidence, classes, probabilities, "
                "flagged, threshold, thumbnail, queued_at) "
                "VALUES (?, 'm@1', 'f', 'monocyte', 0.5, '[]', '[]', 1, NULL, zeroblob(4096), 'now')",
                (f"x{k}",),
            )
        ready.touch()
        time.sleep(60)
"""


def test_writer_killed_mid_transaction_loses_only_that_transaction(tmp_path):
    db, ready, n = tmp_path / "r.db", tmp_path / "ready", 100
    proc = _spawn(KILLED, str(db), str(n), str(ready))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "writer died or never got ready"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL

    store = ReviewStore(db)
    assert store.integrity() == "ok"
    hist = store.history()
    assert [d.sha256 for d in hist] == [f"done-{k}" for k in range(n)]
    assert store.items() == []  # the uncommitted items are gone too
    store.decide("after", "m@1", "eosinophil", "next", predicted_class="eosinophil")  # the lock died with the writer
    assert len(store.history()) == n + 1


STREAM = """
    import sys
    from hematovision.review.store import ReviewStore
    store = ReviewStore(sys.argv[1])
    k = 0
    while True:
        store.decide(f"s-{k}", "m@1", "monocyte", "stream", predicted_class="lymphocyte")
        print(k, flush=True)  # acknowledged only after COMMIT returned
        k += 1
"""


def test_writer_killed_at_a_random_moment_keeps_every_acknowledged_decision(tmp_path):
    db = tmp_path / "r.db"
    proc = _spawn(STREAM, str(db), stdout=subprocess.PIPE, text=True)
    acked = []
    while len(acked) < 60:
        line = proc.stdout.readline()
        assert line, "writer stopped"
        acked.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)  # most likely inside a transaction: writes dominate the loop
    proc.wait(10)
    acked += [int(x) for x in proc.stdout.read().split()]
    store = ReviewStore(db)
    assert store.integrity() == "ok"
    got = [int(d.sha256[2:]) for d in store.history()]
    assert got[: len(acked)] == acked and got == list(range(len(got)))  # every acknowledged one, in order, no holes


def _items(*specs):
    out = []
    for sha, pred, flagged, reviewed in specs:
        d = review.Decision(sha, "v", pred, reviewed, "ann") if reviewed else None
        out.append(review.Item(sha, "v", sha + ".png", pred, 0.5, tuple(CLASSES), (0.25,) * 4, flagged, "t", d))
    return out


def test_select_progress_and_next():
    items = _items(
        ("a", "lymphocyte", True, None),
        ("b", "monocyte", True, "monocyte"),
        ("c", "monocyte", True, "neutrophil"),
        ("d", "eosinophil", True, UNUSABLE),
        ("e", "neutrophil", False, None),
        ("f", "neutrophil", False, "lymphocyte"),
    )
    sel = lambda *a, **k: [i.sha256 for i in review.select(items, *a, **k)]  # noqa: E731
    assert sel("all") == ["a", "b", "c", "d", "f"]  # unflagged only once reviewed
    assert sel("all", flagged_only=False) == list("abcdef")
    assert sel("unreviewed") == ["a"] and sel("reviewed") == ["b", "c", "d", "f"]
    assert sel("reclassified") == ["c", "f"] and sel("unusable") == ["d"]
    assert sel("all", classes=["neutrophil"]) == ["c", "f"]  # predicted or final class
    assert review.progress(review.select(items)).text == "4 of 5 reviewed"
    assert [i.final_class for i in items] == [
        "lymphocyte",
        "monocyte",
        "neutrophil",
        UNUSABLE,
        "neutrophil",
        "lymphocyte",
    ]
    assert review.next_index(items, 0) == 4 and review.next_index(items, 4) == 0
    assert review.next_index(items[1:4], 0) == 1 and review.next_index([], 0) == 0
    with pytest.raises(ValueError):
        review.select(items, "done")


def test_thumbnail_png_is_bounded():
    import io

    import numpy as np
    from PIL import Image

    png = review.thumbnail_png(np.zeros((600, 300, 3), np.uint8))
    assert Image.open(io.BytesIO(png)).size == (128, 256)
    assert Image.open(io.BytesIO(review.thumbnail_png(np.zeros((40, 50, 3), np.uint8)))).size == (50, 40)


def test_reports_use_final_classes_and_queue_only_this_batchs_flagged():
    from hematovision.app import batching
    from hematovision.reports import tables as report

    cache = batching.ResultCache()
    entries = [
        batching.Entry("a.png", "aa", data=b"A"),
        batching.Entry("b.png", "bb", data=b"B"),
        batching.Entry("c.png", "cc", data=b"C"),
        batching.Entry("a-copy.png", "aa", data=b"A"),
        batching.Entry("bad.png", error="x"),
    ]
    cache.put(("aa", "v"), _pred("a.png", "aa", "lymphocyte", 0.4))
    cache.put(("bb", "v"), _pred("b.png", "bb", "monocyte", 0.95, flagged=False))
    cache.put(("cc", "v"), _pred("c.png", "cc", "monocyte", 0.5))
    todo = batching.for_review(entries, cache, "v", 0.9)
    assert [(p.file, data) for p, data in todo] == [("a.png", b"A"), ("c.png", b"C")]  # flagged at 0.9, each image once
    assert [p.file for p, _ in batching.for_review(entries, cache, "v", 0.9, skip=[("aa", "v")])] == ["c.png"]
    assert batching.image_of(entries, "cc") == b"C" and batching.image_of(entries, "zz") is None

    preds, thumbs = batching.assemble(entries, cache, "v")
    frame = batching.results_frame(preds, thumbs, CLASSES, 0.9)
    d = lambda cls: review.Decision("", "v", "", cls, "ann", "", "2026-01-01T00:00:00Z")  # noqa: E731
    frame = report.with_reviews(frame, {"aa": d("neutrophil"), "cc": d(UNUSABLE)})
    assert frame["final_class"].tolist() == ["neutrophil", "monocyte", UNUSABLE, "neutrophil", ""]
    assert frame["reviewer"].tolist() == ["ann", "", "ann", "ann", ""]
    s = batching.summarise(frame, CLASSES)
    assert (s.n_classified, s.n_reviewed, s.n_unusable, s.n_errors) == (4, 3, 1, 1)
    diff = s.differential.set_index("class")
    assert diff["count"].to_dict() == {"eosinophil": 0, "lymphocyte": 0, "monocyte": 1, "neutrophil": 2}
    assert diff["percent"].sum() == pytest.approx(100.0)  # of the 3 white cells; the unusable one is out
    import io

    import pandas as pd

    out = pd.read_csv(io.StringIO(batching.csv_report(frame, CLASSES, 0.9, "v")), keep_default_na=False)
    assert out["final_class"].tolist() == ["neutrophil", "monocyte", UNUSABLE, "neutrophil", ""]
    assert out["reviewed_at"].tolist()[0] == "2026-01-01T00:00:00Z"


def test_queue_with_images_stores_a_bounded_thumbnail(tmp_path):
    import io

    from PIL import Image

    from conftest import image_bytes

    store = ReviewStore(tmp_path / "r.db")
    big = image_bytes("PNG", size=(640, 480), seed=1)
    assert (
        review.queue_with_images(
            store, [(_pred("big.png", "big"), big), (_pred("junk.png", "junk"), b"junk")], CLASSES, "v", 0.9
        )
        == 2
    )
    assert Image.open(io.BytesIO(store.thumbnail("big", "v"))).size == (256, 192)
    assert store.thumbnail("junk", "v") is None and len(store.items()) == 2


def test_pending_is_what_is_flagged_now_or_sent_and_decisions_are_never_dropped(tmp_path):
    store = ReviewStore(tmp_path / "r.db")
    # Raised to 1.0 for a moment, every image of the batch was queued.
    preds = [_pred(f"{k}.png", f"s{k}", conf=c) for k, c in enumerate([0.40, 0.80, 0.95, 0.99])]
    store.queue(preds, CLASSES, "m@1", threshold=1.0, batch="upload A")
    store.decide("s3", "m@1", "lymphocyte", "ann")
    items = store.items("m@1")
    # Back at 0.9: only what is flagged now is pending; the decided one stays.
    assert [i.file for i in review.select(items, "all", threshold=0.9)] == ["0.png", "1.png", "3.png"]
    assert review.progress(review.select(items, "all", threshold=0.9)).text == "1 of 3 reviewed"
    assert [i.file for i in review.select(items, "unreviewed", threshold=0.5)] == ["0.png"]
    # Sent on purpose: pending whatever the threshold.
    store.queue([_pred("2.png", "s2", conf=0.95, flagged=False)], CLASSES, "m@1", sent=True)
    assert "2.png" in [i.file for i in review.select(store.items("m@1"), "unreviewed", threshold=0.5)]


def test_a_batch_can_be_cleared_without_losing_a_decision(tmp_path):
    store = ReviewStore(tmp_path / "r.db")
    store.queue([_pred(f"{k}.png", f"a{k}") for k in range(3)], CLASSES, "m@1", batch="samples")
    store.queue([_pred("u.png", "u0")], CLASSES, "m@1", batch="upload B")
    store.decide("a0", "m@1", "monocyte", "ann")
    assert store.dismiss("samples") == 2
    shown = review.select(store.items(), "all", threshold=1.0)
    assert sorted(i.file for i in shown) == ["0.png", "u.png"] and len(store.history()) == 1
    # The same image queued again from a new batch is pending again.
    store.queue([_pred("1.png", "a1")], CLASSES, "m@1", batch="upload C")
    assert "1.png" in [i.file for i in review.select(store.items(), "unreviewed", threshold=1.0)]


def test_schema_1_database_is_migrated_keeping_items_and_decisions(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        schema = review._SCHEMA
        old_schema = schema.replace(schema[schema.index("    batch TEXT"):schema.index("    PRIMARY KEY")], "")
        for stmt in review._statements(old_schema):
            conn.execute(stmt)
        conn.execute("INSERT INTO items VALUES ('s1', 'm@1', 'f.png', 'monocyte', 0.5, ?, '[0.1,0.1,0.5,0.3]', 1, 0.9, "
                     "NULL, 'now')", (json.dumps(CLASSES),))
        conn.execute("INSERT INTO decisions (sha256, model_version, predicted_class, reviewed_class, reviewer, note, "
                     "reviewed_at) VALUES ('s1', 'm@1', 'monocyte', 'neutrophil', 'ann', '', 'now')")
        conn.execute("PRAGMA user_version = 1")
    store = ReviewStore(path)
    [item] = store.items()
    assert item.decision.reviewed_class == "neutrophil" and item.batch == "" and not item.sent and not item.dismissed
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == review.SCHEMA_VERSION == 2

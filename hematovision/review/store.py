"""The review queue: people confirm or correct predictions; decisions live in SQLite.

A digital-morphology analyzer pre-classifies and a technologist confirms or
reclassifies each uncertain cell; the reviewed result is what counts. This module
is that loop's memory, free of Streamlit so the CLI, tests and pages share it.

Storage (one file, ``reviews.sqlite3``; see :func:`db_path`):

- ``items``: what was put up for review, keyed by ``(sha256, model_version)``: file
  name, classes, probabilities, the flag, and a downscaled PNG thumbnail (longest side
  :data:`THUMB_SIDE` px). Uploaded images are not on disk, so this is what lets an
  earlier batch be reviewed after a restart.
- ``decisions``: append-only, one row per decision (an audit trail: who changed what,
  when). The latest row per ``(sha256, model_version)`` is the current review.

Durability: WAL journal, ``synchronous=FULL``, every write in one ``BEGIN IMMEDIATE``
transaction, retried while another writer holds the lock. A process killed mid-write
loses only its uncommitted transaction. The schema version is ``PRAGMA user_version``;
a database from a newer (or unknown) schema raises :class:`ReviewDBError` untouched.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import user_data_dir
from ..imaging.decode import decode_image
from ..reports.tables import UNUSABLE, to_csv  # UNUSABLE: a value of reviewed_class, defined beside the review columns
from ..serving.classifier import Prediction

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

DB_ENV = "HEMATOVISION_REVIEW_DB"
DB_FILENAME = "reviews.sqlite3"
SCHEMA_VERSION = 2
THUMB_SIDE = 256
BUSY_TIMEOUT_MS = 5_000
RETRY_SECONDS = 30.0

Key = tuple[str, str]  # (sha256 of the image bytes, model version)

_SCHEMA = """
CREATE TABLE items (
    sha256 TEXT NOT NULL,
    model_version TEXT NOT NULL,
    file TEXT NOT NULL,
    predicted_class TEXT NOT NULL,
    confidence REAL NOT NULL,
    classes TEXT NOT NULL,          -- JSON list, model output order
    probabilities TEXT NOT NULL,    -- JSON list, same order
    flagged INTEGER NOT NULL,       -- flagged when it was queued (confidence < threshold)
    threshold REAL,
    thumbnail BLOB,                 -- PNG, longest side <= 256 px
    queued_at TEXT NOT NULL,
    batch TEXT NOT NULL DEFAULT '',     -- the Classify page's batch it came from (schema 2)
    sent INTEGER NOT NULL DEFAULT 0,    -- a person sent it to review on purpose (schema 2)
    dismissed INTEGER NOT NULL DEFAULT 0, -- its batch's pending items were cleared (schema 2)
    PRIMARY KEY (sha256, model_version)
);
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    model_version TEXT NOT NULL,
    predicted_class TEXT NOT NULL,
    reviewed_class TEXT NOT NULL,   -- one of the classes, or 'unusable'
    reviewer TEXT NOT NULL,
    note TEXT NOT NULL,
    reviewed_at TEXT NOT NULL       -- UTC, ISO 8601
);
CREATE INDEX decisions_key ON decisions (sha256, model_version, id);
"""
#: Schema 1 -> 2: what pending means became "flagged at the current threshold, or sent on purpose",
#: so an item records its batch, whether it was sent, and whether its batch's pending items were cleared.
_MIGRATE_1_TO_2 = [
    "ALTER TABLE items ADD COLUMN batch TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE items ADD COLUMN sent INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE items ADD COLUMN dismissed INTEGER NOT NULL DEFAULT 0",
]


def _statements(script: str) -> list[str]:
    lines = [ln.split("--")[0] for ln in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class ReviewDBError(RuntimeError):
    """The review database cannot be used as it is (newer schema, not ours, unwritable)."""


@dataclass(frozen=True)
class Decision:
    """One reviewer decision (a row of the audit trail)."""

    sha256: str
    model_version: str
    predicted_class: str
    reviewed_class: str
    reviewer: str = ""
    note: str = ""
    reviewed_at: str = ""
    id: int = 0

    @property
    def action(self) -> str:
        """``confirmed``, ``reclassified`` or ``unusable``: how the reviewer changed the prediction."""
        if self.reviewed_class == UNUSABLE:
            return UNUSABLE
        return "confirmed" if self.reviewed_class == self.predicted_class else "reclassified"


@dataclass(frozen=True)
class Item:
    """A prediction put up for review, with its current decision (``None`` when unreviewed)."""

    sha256: str
    model_version: str
    file: str
    predicted_class: str
    confidence: float
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]
    flagged: bool  # when it was queued
    queued_at: str
    decision: Decision | None = None
    batch: str = ""
    sent: bool = False
    dismissed: bool = False

    @property
    def key(self) -> Key:
        return (self.sha256, self.model_version)

    @property
    def status(self) -> str:
        """``unreviewed``, ``confirmed``, ``reclassified`` or ``unusable``."""
        return "unreviewed" if self.decision is None else self.decision.action

    @property
    def final_class(self) -> str:
        return final_class(self.predicted_class, self.decision)

    def in_queue(self, threshold: float | None = None) -> bool:
        """Whether it belongs on the review list: decided (never dropped), sent on purpose, or, unless
        its batch was cleared, flagged: below ``threshold`` when one is given, else when it was queued."""
        if self.decision is not None:
            return True
        if self.dismissed:
            return False
        flagged = self.flagged if threshold is None else self.confidence < threshold
        return self.sent or flagged


def final_class(predicted: str, decision: Decision | None) -> str:
    """What counts: the reviewed class where there is one (``unusable`` included), else the prediction."""
    return decision.reviewed_class if decision is not None else predicted


def db_path(override: str | os.PathLike | None = None) -> Path:
    """Explicit argument, then ``$HEMATOVISION_REVIEW_DB``, then ``user_data_dir()/reviews.sqlite3``."""
    chosen = override or os.environ.get(DB_ENV)
    return Path(chosen).expanduser().resolve() if chosen else user_data_dir() / DB_FILENAME


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def thumbnail_png(rgb: np.ndarray, side: int = THUMB_SIDE) -> bytes:
    """A bounded copy for the database: longest side at most ``side`` px, PNG (lossless).

    OpenCV at compression level 3: ~7 ms an image against ~70 ms for Pillow's
    ``optimize=True`` (which saved ~12% of the bytes); queueing a batch's flagged
    images happens while the Classify page redraws, so speed wins.
    """
    import cv2

    rgb = np.asarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("could not encode the thumbnail")
    return buf.tobytes()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _upgrade(conn, from_version: int, statements) -> None:
    """Run ``statements`` and set the current schema version in one write transaction, unless another process
    moved the file past ``from_version`` meanwhile (then nothing is done)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == from_version:
            for stmt in statements:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class ReviewStore:
    """The review database at one path. Every method opens its own short-lived connection,
    so a store can be shared by Streamlit's script threads, processes and the CLI.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, retry_seconds: float = RETRY_SECONDS):
        self.path = db_path(path)
        self.retry_seconds = retry_seconds
        self._init_schema()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA schema_version").fetchone()  # reads the header: a non-database fails here
        except sqlite3.OperationalError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:  # "file is not a database"
            conn.close()
            raise ReviewDBError(f"{self.path} is not a SQLite database ({exc})") from exc
        return conn

    def _retrying(self, fn):
        """Run ``fn`` until it gets past ``database is locked`` / ``busy`` (with jittered back-off), or time runs
        out."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.02
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); rolled back on any error.

        Retries on a busy database happen in :meth:`_write`; use this directly only for
        work that must not be repeated (tests use it to be killed mid-transaction).
        """
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _write(self, work) -> None:
        def once():
            with self.transaction() as conn:
                work(conn)
        self._retrying(once)

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        def once():
            with closing(self._connect()) as conn:
                return conn.execute(sql, params).fetchall()
        return self._retrying(once)

    def _init_schema(self) -> None:
        """Create on first use; refuse (without writing) a newer or foreign schema."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReviewDBError(f"cannot create the folder for the review database {self.path.parent}: {exc}") from exc

        def once():
            with closing(self._connect()) as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == SCHEMA_VERSION:
                    return
                if version == 1:
                    _upgrade(conn, 1, _MIGRATE_1_TO_2)
                    return
                if version > SCHEMA_VERSION:
                    raise ReviewDBError(
                        f"{self.path} has review schema version {version}, newer than this HematoVision understands "
                        f"({SCHEMA_VERSION}); upgrade HematoVision or point {DB_ENV} at another file. The file was "
                        f"not changed."
                    )
                if version == 0:
                    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                    if tables:
                        raise ReviewDBError(f"{self.path} is a SQLite database but not a HematoVision review database "
                                            f"(tables: {', '.join(sorted(tables))}); it was not changed")
                    conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
                    _upgrade(conn, 0, _statements(_SCHEMA))  # not executescript: it would commit first
                    return
                raise ReviewDBError(f"{self.path} has unknown review schema version {version}; it was not changed")
        self._retrying(once)

    # ------------------------------------------------------------------ writes

    def queue(self, preds: Iterable[Prediction], classes: Sequence[str], model_version: str,
              thumbnails: dict[str, bytes] | None = None, threshold: float | None = None, *, batch: str = "",
              sent: bool = False) -> int:
        """Put classified predictions up for review (insert or refresh), in one transaction; returns how many.

        ``thumbnails``: PNG bytes by sha256 (see :func:`thumbnail_png`). An item already
        queued keeps its thumbnail when none is given, and stays flagged once flagged. ``batch``
        names the batch it came from; ``sent``: a person asked for its review. Queued again from
        another batch, or sent, an item whose batch was cleared is pending again.
        """
        thumbnails = thumbnails or {}
        rows = [(p.sha256, model_version, p.file, p.predicted_class, float(p.confidence), json.dumps(list(classes)),
                 json.dumps([float(v) for v in p.probabilities]), int(bool(p.flagged)), threshold,
                 thumbnails.get(p.sha256), now_utc(), batch, int(bool(sent)))
                for p in preds if p.ok and p.sha256]
        if not rows:
            return 0

        def work(conn):
            conn.executemany(
                "INSERT INTO items (sha256, model_version, file, predicted_class, confidence, classes, probabilities, "
                "flagged, threshold, thumbnail, queued_at, batch, sent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sha256, model_version) DO UPDATE SET file = excluded.file, "
                "flagged = MAX(items.flagged, excluded.flagged), "
                "threshold = COALESCE(excluded.threshold, items.threshold), "
                "thumbnail = COALESCE(excluded.thumbnail, items.thumbnail), "
                "dismissed = CASE WHEN excluded.sent OR (excluded.batch != '' AND excluded.batch != items.batch) "
                "THEN 0 ELSE items.dismissed END, "  # (SQLite evaluates every SET expression on the old row)
                "batch = CASE WHEN excluded.batch != '' THEN excluded.batch ELSE items.batch END, "
                "sent = MAX(items.sent, excluded.sent)", rows)
        self._write(work)
        return len(rows)

    def dismiss(self, batch: str, model_version: str | None = None) -> int:
        """Clear a batch's pending items: its unreviewed items leave the review list (decided ones, and
        every decision, stay). Returns how many were cleared."""
        sql = ("UPDATE items SET dismissed = 1, sent = 0 WHERE batch = ? AND dismissed = 0 AND NOT EXISTS "
               "(SELECT 1 FROM decisions d WHERE d.sha256 = items.sha256 AND d.model_version = items.model_version)")
        params: list = [batch]
        if model_version is not None:
            sql, params = sql + " AND model_version = ?", params + [model_version]
        out: dict = {}

        def work(conn):
            out["n"] = conn.execute(sql, params).rowcount
        self._write(work)
        return out["n"]

    def decide(self, sha256: str, model_version: str, reviewed_class: str, reviewer: str = "", note: str = "",
               *, predicted_class: str | None = None, classes: Sequence[str] | None = None) -> Decision:
        """Record one decision (appended; earlier ones are kept). Returns it, with its id and time.

        ``reviewed_class`` must be one of the item's classes or :data:`UNUSABLE`. The item's
        stored prediction is used unless ``predicted_class`` is given (for an item not queued).
        """
        reviewed_class = str(reviewed_class).strip()
        reviewer, note = str(reviewer or "").strip(), str(note or "").strip()
        out: dict = {}

        def work(conn):
            row = conn.execute("SELECT predicted_class, classes FROM items WHERE sha256 = ? AND model_version = ?",
                               (sha256, model_version)).fetchone()
            pred = predicted_class if predicted_class is not None else (row[0] if row else None)
            allowed = list(classes) if classes is not None else (json.loads(row[1]) if row else None)
            if pred is None:
                raise ValueError(
                    f"no prediction queued for {sha256[:12]}… under model {model_version}; pass predicted_class"
                )
            if reviewed_class != UNUSABLE and allowed is not None and reviewed_class not in allowed:
                raise ValueError(f"reviewed class {reviewed_class!r} is not one of {allowed + [UNUSABLE]}")
            at = now_utc()
            cur = conn.execute(
                "INSERT INTO decisions (sha256, model_version, predicted_class, reviewed_class, reviewer, note, "
                "reviewed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sha256, model_version, pred, reviewed_class, reviewer, note, at))
            out["d"] = Decision(sha256, model_version, pred, reviewed_class, reviewer, note, at, int(cur.lastrowid))
        self._write(work)
        return out["d"]

    # ------------------------------------------------------------------ reads

    _CURRENT = (
        "SELECT d.id, d.sha256, d.model_version, d.predicted_class, d.reviewed_class, d.reviewer, d.note, "
        "d.reviewed_at "
        "FROM decisions d JOIN (SELECT MAX(id) AS id FROM decisions GROUP BY sha256, model_version) m ON d.id = m.id"
    )

    @staticmethod
    def _decision(r) -> Decision:
        return Decision(r[1], r[2], r[3], r[4], r[5], r[6], r[7], int(r[0]))

    def current(self, model_version: str | None = None) -> dict[Key, Decision]:
        """The latest decision per ``(sha256, model_version)`` (optionally of one model version)."""
        sql, params = self._CURRENT, ()
        if model_version is not None:
            sql, params = sql + " WHERE d.model_version = ?", (model_version,)
        return {(d.sha256, d.model_version): d for d in map(self._decision, self._read(sql, params))}

    def history(self, sha256: str | None = None, model_version: str | None = None) -> list[Decision]:
        """Every decision, oldest first (of one image and model, when given)."""
        sql = (
            "SELECT id, sha256, model_version, predicted_class, reviewed_class, reviewer, note, reviewed_at "
            "FROM decisions"
        )
        where, params = [], []
        if sha256 is not None:
            where.append("sha256 = ?")
            params.append(sha256)
        if model_version is not None:
            where.append("model_version = ?")
            params.append(model_version)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._decision(r) for r in self._read(sql + " ORDER BY id", params)]

    def items(self, model_version: str | None = None) -> list[Item]:
        """Queued items (oldest first) with their current decisions."""
        sql = (
            "SELECT sha256, model_version, file, predicted_class, confidence, classes, probabilities, flagged, "
            "queued_at, batch, sent, dismissed FROM items"
        )
        params: tuple = ()
        if model_version is not None:
            sql, params = sql + " WHERE model_version = ?", (model_version,)
        current = self.current(model_version)
        out = []
        for r in self._read(sql + " ORDER BY queued_at, rowid", params):
            key = (r[0], r[1])
            out.append(Item(r[0], r[1], r[2], r[3], float(r[4]), tuple(json.loads(r[5])), tuple(json.loads(r[6])),
                            bool(r[7]), r[8], current.get(key), r[9], bool(r[10]), bool(r[11])))
        return out

    def thumbnail(self, sha256: str, model_version: str) -> bytes | None:
        rows = self._read("SELECT thumbnail FROM items WHERE sha256 = ? AND model_version = ?", (sha256, model_version))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def model_versions(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT model_version FROM items ORDER BY model_version")]

    def integrity(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` for a sound file."""
        return self._read("PRAGMA integrity_check")[0][0]

    def export_frame(self) -> pd.DataFrame:
        """Every decision (the audit trail), oldest first, with the item's file and confidence and
        ``current`` (whether it is the latest for its image and model) and ``final_class``."""
        import pandas as pd

        rows = self._read(
            "SELECT d.id, d.reviewed_at, i.file, d.sha256, d.model_version, d.predicted_class, i.confidence, "
            "d.reviewed_class, "
            "d.reviewer, d.note, d.id = (SELECT MAX(id) FROM decisions x WHERE x.sha256 = d.sha256 AND "
            "x.model_version = d.model_version) "
            "FROM decisions d LEFT JOIN items i ON i.sha256 = d.sha256 AND i.model_version = d.model_version ORDER BY "
            "d.id"
        )
        cols = [
            "decision_id",
            "reviewed_at",
            "file",
            "sha256",
            "model_version",
            "predicted_class",
            "confidence",
            "reviewed_class",
            "reviewer",
            "note",
            "current",
        ]
        frame = pd.DataFrame(rows, columns=cols)
        frame["current"] = frame["current"].astype(bool)
        frame["file"] = frame["file"].fillna("")
        frame["final_class"] = frame["reviewed_class"]
        return frame


# ---------------------------------------------------------------------- queue logic (pure)

STATUS_FILTERS = ("unreviewed", "reviewed", "reclassified", "unusable", "all")


@dataclass(frozen=True)
class Progress:
    reviewed: int
    total: int

    @property
    def text(self) -> str:
        return f"{self.reviewed} of {self.total} reviewed"


def progress(items: Sequence[Item]) -> Progress:
    return Progress(sum(it.decision is not None for it in items), len(items))


def select(items: Sequence[Item], status: str = "all", classes: Sequence[str] | None = None,
           flagged_only: bool = True, threshold: float | None = None, batch: str | None = None) -> list[Item]:
    """The items a reviewer asked to see. ``classes`` restricts by predicted or reviewed class.

    With ``flagged_only``, only items on the review list (:meth:`Item.in_queue` at ``threshold``):
    an unreviewed item no longer flagged at the current threshold leaves it; a decided one never does.
    ``batch`` restricts to one batch."""
    if status not in STATUS_FILTERS:
        raise ValueError(f"status must be one of {STATUS_FILTERS}")
    out = []
    for it in items:
        if flagged_only and not it.in_queue(threshold):
            continue
        if batch is not None and it.batch != batch:
            continue
        st = it.status
        if status == "unreviewed" and st != "unreviewed":
            continue
        if status == "reviewed" and st == "unreviewed":
            continue
        if status in ("reclassified", "unusable") and st != status:
            continue
        if classes is not None and it.predicted_class not in classes and it.final_class not in classes:
            continue
        out.append(it)
    return out


def next_index(items: Sequence[Item], after: int) -> int:
    """The next unreviewed item after position ``after`` (wrapping), else the one after it: a fast review flow."""
    n = len(items)
    if n == 0:
        return 0
    for step in range(1, n + 1):
        k = (after + step) % n
        if items[k].decision is None:
            return k
    return min(after + 1, n - 1)


def _thumbnail_of(data: bytes) -> bytes | None:
    """A queue thumbnail (PNG) from an image's bytes, or ``None`` when they do not decode."""
    try:
        return thumbnail_png(decode_image(data).rgb)
    except Exception:  # the prediction still deserves review; it just has no picture
        return None


def queue_with_images(store: ReviewStore, items: Sequence[tuple[Prediction, bytes]], classes: Sequence[str],
                      model_version: str, threshold: float | None = None, *, batch: str = "",
                      sent: bool = False) -> int:
    """Queue predictions with a bounded thumbnail made from each image's bytes (undecodable: no thumbnail).

    Thumbnails are made on two threads (decoding and PNG encoding release the GIL): a batch with
    hundreds of flagged images is queued while its page draws."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        made = list(pool.map(_thumbnail_of, [data for _, data in items]))
    thumbs = {p.sha256: t for (p, _), t in zip(items, made) if t is not None}
    return store.queue([p for p, _ in items], classes, model_version, thumbs, threshold, batch=batch, sent=sent)


def export_csv(store: ReviewStore) -> str:
    """All decisions as a spreadsheet-safe CSV (formula cells neutralised)."""
    return to_csv(store.export_frame())

"""The ``classify`` results file for long runs: the CLI's CSV (or a Parquet dataset), appended row by row
in input order, and what an existing one already holds, so that ``--resume`` classifies only the rest.

CSV: the columns and formatting of ``classify``'s default engine (:func:`image_row`; file names neutralised
against spreadsheet formulas). A run cut short leaves a prefix of the rows, at worst with a torn last line,
which a resumed run drops before appending.

Parquet (``--out NAME.parquet``): a folder of ``part-NNNNNN.parquet`` files, the same columns with typed
values (names as given, ``confidence`` and ``p_*`` as float64, NaN on error rows); each part is written to a
hidden temporary file and renamed, so an interrupted run leaves only whole parts. Parts in name order hold
the rows in input order.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..serving.classifier import BATCH_SHIFT, Prediction
from .tables import TRUST_COLUMNS, columns, neutralise, trust_cells

#: Rows per Parquet part (the last part of a run may be shorter).
PARQUET_ROWS_PER_PART = 50_000
PART_PREFIX = "part-"


class ResultsFileError(ValueError):
    """An existing results file that cannot be resumed (other columns, not a CSV/Parquet of ``classify``)."""


def is_parquet(out: str | Path) -> bool:
    return str(out).lower().rstrip("/").endswith(".parquet")


def image_row(p: Prediction, classes: Sequence[str], threshold: float, version: str) -> list:
    """One CSV row, as ``classify``'s default engine writes it (before :func:`neutralise`)."""
    row = [p.file, p.predicted_class, "" if not p.ok else f"{p.confidence:.6f}"]
    row += [f"{v:.6f}" for v in p.probabilities] if p.ok else [""] * len(classes)
    return row + [p.flagged, p.error, threshold, version] + trust_cells(p)


def result_columns(classes: Sequence[str]) -> list[str]:
    return columns(classes) + ["threshold", "model_version"] + TRUST_COLUMNS


class ResultsWriter:
    """Append :class:`Prediction` rows to ``out`` (CSV or Parquet); ``resume`` keeps what is there.

    ``done(name)`` says whether ``out`` already held a row for that input when the writer opened."""

    def __init__(
        self, out: str | Path, classes: Sequence[str], threshold: float, version: str, resume: bool = False
    ):
        self.out = Path(out)
        self.classes = list(classes)
        self.threshold = float(threshold)
        self.version = version
        self.cols = result_columns(classes)
        self.parquet = is_parquet(out)
        self.kept = 0  # rows already there (resume)
        self._done: set[str] = set()
        self._rows: list[Prediction] = []
        self._part = 0
        if self.parquet:
            self._open_parquet(resume)
        else:
            self._open_csv(resume)

    def done(self, name: str) -> bool:
        return (name if self.parquet else neutralise(name)) in self._done

    # ------------------------------------------------------------------ CSV

    def _open_csv(self, resume: bool) -> None:
        names = _csv_names(self.out, self.cols) if resume and self.out.is_file() else None
        if names is not None:
            self._done, self.kept = set(names), len(names)
            self._fh = open(self.out, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._csv = csv.writer(self._fh)
        else:
            self._fh = open(self.out, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._csv = csv.writer(self._fh)
            self._csv.writerow(self.cols)

    # ------------------------------------------------------------------ Parquet

    def _open_parquet(self, resume: bool) -> None:
        import pyarrow.parquet as pq  # Parquet output only (pyarrow comes with Ray Data)

        if self.out.exists() and not self.out.is_dir():
            raise ResultsFileError(f"{self.out} is a file; a Parquet output is a folder")
        self.out.mkdir(exist_ok=True)
        parts = sorted(self.out.glob(f"{PART_PREFIX}*.parquet"))
        if not resume:
            for f in parts:  # a fresh run replaces the parts of an earlier one (nothing else in the folder)
                f.unlink()
            return
        for f in parts:
            table = pq.read_table(f, columns=None)
            if table.column_names != self.cols:
                raise ResultsFileError(f"{f} has other columns than this model's results; cannot resume")
            names = table.column("file").to_pylist()
            self._done.update(names)
            self.kept += len(names)
            self._part = max(self._part, int(f.stem[len(PART_PREFIX):]) + 1)

    def _flush_parquet(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa  # see _open_parquet
        import pyarrow.parquet as pq

        rows, self._rows = self._rows, []
        k = len(self.classes)
        data = {
            "file": [p.file for p in rows],
            "predicted_class": [p.predicted_class for p in rows],
            "confidence": [p.confidence if p.ok else float("nan") for p in rows],
        }
        for j, c in enumerate(self.classes):
            data[f"p_{c}"] = [p.probabilities[j] if p.ok and len(p.probabilities) == k else float("nan") for p in rows]
        data.update(
            flagged=[bool(p.flagged) for p in rows],
            error=[p.error for p in rows],
            threshold=[self.threshold] * len(rows),
            model_version=[self.version] * len(rows),
            unfamiliar=[bool(p.unfamiliar) for p in rows],
            flag_reason=[p.flag_reason for p in rows],
            unfamiliarity=[float(p.unfamiliarity) if p.ok else float("nan") for p in rows],
        )
        name = f"{PART_PREFIX}{self._part:06d}.parquet"
        tmp = self.out / f".{name}.tmp"
        pq.write_table(pa.table(data), tmp)
        os.replace(tmp, self.out / name)
        self._part += 1

    # ------------------------------------------------------------------ both

    def write(self, p: Prediction) -> None:
        if self.parquet:
            self._rows.append(p)
            if len(self._rows) >= PARQUET_ROWS_PER_PART:
                self._flush_parquet()
        else:
            self._csv.writerow([neutralise(v) for v in image_row(p, self.classes, self.threshold, self.version)])

    def close(self) -> None:
        """Write what is buffered (also after an interruption: every row handed over is kept)."""
        if self.parquet:
            self._flush_parquet()
        else:
            self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _csv_names(path: Path, cols: list[str]) -> list[str] | None:
    """The ``file`` column of a results CSV (``None`` when it holds not even a header); a torn last line
    (a run killed mid-write) is cut off the file."""
    with open(path, "r+b") as fh:
        end = _after_last_newline(fh)
        if end < fh.seek(0, os.SEEK_END):  # the last row never finished: drop it, it is classified again
            fh.truncate(end)
    if end == 0:
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        return _names(csv.reader(fh), path, cols)


def _after_last_newline(fh, step: int = 1 << 16) -> int:
    """The offset just past the file's last newline (0 when there is none), read backwards from the end."""
    pos = fh.seek(0, os.SEEK_END)
    while pos > 0:
        start = max(0, pos - step)
        fh.seek(start)
        i = fh.read(pos - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def _names(reader, path: Path, cols: list[str]) -> list[str]:
    header = next(reader, None)
    if header != cols:
        raise ResultsFileError(
            f"{path} has other columns than this model's results ({', '.join(header or [])}); cannot resume"
        )
    names = []
    for row in reader:
        if len(row) != len(cols):
            raise ResultsFileError(f"{path} has a row with {len(row)} values, expected {len(cols)}; cannot resume")
        names.append(row[0])
    return names


# ---------------------------------------------------------------------- the batch hold


def hold_csv(src: IO[str], dst: IO[str]) -> int:
    """Copy a results CSV (single images or ``--fields``, any columns with ``predicted_class``, ``flagged`` and
    ``error``) from ``src`` to ``dst`` with the batch hold applied (``tables.hold_frame``, on text): a
    classified row not yet flagged becomes ``flagged`` ``True`` with ``flag_reason`` ``batch_shift``. Every
    other cell is copied as it was written (neutralised names stay neutralised). The number of rows held."""
    reader, writer = csv.reader(src), csv.writer(dst)
    header = next(reader, None)
    if header is None:
        return 0
    writer.writerow(header)
    cls, flag, err = (header.index(c) for c in ("predicted_class", "flagged", "error"))
    why = header.index("flag_reason") if "flag_reason" in header else None
    held = 0
    for row in reader:
        if len(row) == len(header) and row[cls] and not row[err] and row[flag] == "False":
            row[flag] = "True"
            if why is not None:
                row[why] = BATCH_SHIFT
            held += 1
        writer.writerow(row)
    return held


def hold_results(out: str | Path) -> int:
    """Apply the batch hold to a finished results file in place: a CSV (rewritten through a temporary file
    beside it, then renamed) or a Parquet folder (each part likewise). A symbolic link is followed: the file it
    points to is rewritten, the link stays. The number of rows held."""
    out = Path(out).resolve()
    if not out.is_file() and not out.is_dir():
        raise ResultsFileError(f"{out} is not a results file that can be rewritten")
    if out.is_dir():
        return _hold_parquet(out)
    tmp = out.with_name(f".{out.name}.hold.tmp")
    with open(out, newline="", encoding="utf-8") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
        held = hold_csv(src, dst)
    os.replace(tmp, out)
    return held


def _hold_parquet(folder: Path) -> int:
    import pyarrow as pa  # Parquet output only (see ResultsWriter._open_parquet)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    held = 0
    for f in sorted(folder.glob(f"{PART_PREFIX}*.parquet")):
        table = pq.read_table(f)
        ok = pc.and_(pc.equal(table.column("error"), ""), pc.not_equal(table.column("predicted_class"), ""))
        new = pc.and_(ok, pc.invert(table.column("flagged")))
        n = pc.sum(pc.cast(new, pa.int64())).as_py() or 0
        if not n:
            continue
        table = table.set_column(table.column_names.index("flagged"), "flagged", pc.or_(table.column("flagged"), new))
        reason = pc.if_else(new, pa.scalar(BATCH_SHIFT), table.column("flag_reason"))
        table = table.set_column(table.column_names.index("flag_reason"), "flag_reason", reason)
        tmp = folder / f".{f.name}.hold.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, f)
        held += n
    return held

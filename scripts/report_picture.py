"""Make the README's picture of a report page (docs/screenshots/report.png).

    .venv/bin/python scripts/report_picture.py      # needs the data root and poppler-utils (pdftoppm)

Kaggle TEST_SIMPLE (71 images) is classified by the shipped model with the CLI; every flagged
cell is then "reviewed" with the class its dataset folder gives (reviewer "dataset label (demo)"),
in a temporary review database, so the page shows a finished review: confirmed and reclassified
cells and the sign-off line. The first page is rendered at 100 dpi.
"""

import csv
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hematovision.config import data_root  # noqa: E402
from hematovision.review import ReviewStore  # noqa: E402


def main() -> int:
    images = data_root() / "blood-cells" / "dataset2-master" / "images" / "TEST_SIMPLE"
    if not images.is_dir():
        print(f"not found: {images}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, HEMATOVISION_HOME=str(tmp / "home"))
        results, pdf, db = tmp / "results.csv", tmp / "report.pdf", tmp / "reviews.sqlite3"
        py = [sys.executable, "-m", "hematovision"]
        subprocess.run([*py, "classify", str(images), "--out", str(results), "--quiet"], cwd=ROOT, env=env, check=True)
        store = ReviewStore(db)
        with open(results, newline="") as fh:
            rows = list(csv.DictReader(fh))
        classes = [c[2:] for c in rows[0] if c.startswith("p_")]
        for r in rows:
            if r["flagged"] == "True" and not r["error"]:
                path = Path(r["file"])
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                store.decide(sha, r["model_version"], path.parent.name.lower(),
                             "dataset label (demo)", predicted_class=r["predicted_class"], classes=classes)
        subprocess.run([*py, "report", str(results), "--out", str(pdf), "--sample-id", "TEST_SIMPLE-demo",
                        "--operator", "HematoVision CI", "--review-db", str(db)], cwd=ROOT, env=env, check=True)
        out = ROOT / "docs" / "screenshots" / "report"
        subprocess.run(["pdftoppm", "-r", "100", "-f", "1", "-l", "1", "-png", "-singlefile", str(pdf), str(out)],
                       check=True)
        print(f"written {out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the dashboard shows: one rounding, short names, status marks, readable local times."""

from __future__ import annotations

import pandas as pd

from hematovision.app import display


def test_one_rounding_for_the_threshold():
    assert display.round_threshold(0.948737) == 0.949 and display.threshold_text(0.948737) == "0.949"
    assert display.round_threshold(1.7) == 1.0 and display.round_threshold(-1) == 0.0


def test_short_names_keep_the_end_of_the_path():
    assert (
        display.short_name("blood-cells/dataset2-master/images/TEST/EOSINOPHIL/_0_1616.jpeg")
        == "EOSINOPHIL/_0_1616.jpeg"
    )
    assert display.short_name("cells.zip/x/one.png") == "x/one.png" and display.short_name("a.png") == "a.png"


def test_status_marks_make_flagged_rows_stand_out():
    frame = pd.DataFrame(
        {
            "error": ["", "", "bad", ""],
            "flagged": [True, False, False, True],
            "reviewed_class": ["", "", "", "monocyte"],
        }
    )
    assert display.status_marks(frame) == [
        display.FLAGGED_MARK,
        display.ACCEPTED_MARK,
        display.ERROR_MARK,
        display.REVIEWED_MARK,
    ]


def test_local_time_is_readable_in_the_viewers_zone():
    assert display.local_time("2026-11-29T20:01:33Z", "Europe/Berlin") == "29 Nov 2026, 21:01"
    assert display.local_time("2026-11-29T20:01:33Z", None) == "29 Nov 2026, 20:01 UTC"
    assert display.local_time("2026-11-29T20:01:33Z", "Not/AZone") == "29 Nov 2026, 20:01 UTC"
    assert display.local_time("", "Europe/Berlin") == ""
    assert (
        display.or_dash(None) == "–"
        and display.or_dash(float("nan")) == "–"
        and display.or_dash(0.5, "{:.0%}") == "50%"
    )


def test_threshold_choice_text_says_when_a_flag_budget_lowered_the_threshold():
    from hematovision.app.display import threshold_choice_text

    plain = threshold_choice_text({"target_accuracy": 0.99})
    assert plain == ("The default threshold was chosen on validation data to reach about 99% accuracy on accepted "
                     "images.")
    capped = threshold_choice_text({"target_accuracy": 0.99, "flag_budget": {"pbc": 0.06}, "capped_from": 0.9524,
                                    "val_accuracy_accepted": 0.9756})
    assert "(0.952), then lowered so that at most 6% of PBC validation images are flagged" in capped
    assert "97.6% right" in capped
    assert threshold_choice_text({}) == ""

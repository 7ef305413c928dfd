"""The Markdown model card: what a reader needs to remake and to trust the shipped network."""

from hematovision.modeling import persistence

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def _card(**training) -> persistence.ModelCard:
    return persistence.ModelCard(name="m", classes=CLASSES, input_size=32, temperature=1.0, default_threshold=0.5,
                                 training={"counts": {}, **training})


def test_card_names_the_command_and_the_draws_it_was_chosen_among():
    selection = {
        "rule": "written before draws 4-6",
        "eligible": "PBC val >= 97.7%",
        "score": "mean of three proxies",
        "candidates": [
            {"seed": "0", "version": "m@aaa", "kaggle_val": 82.77, "pbc_val": 97.92, "eligible": True, "score": 67.4},
            {"seed": 5, "version": "m@bbb", "kaggle_val": 78.95, "pbc_val": 96.77, "eligible": False, "score": 63.9},
        ],
        "chosen": "m@aaa",
    }
    md = persistence.render_card(_card(command="python -m hematovision train --fit-seed 3", selection=selection))
    assert "- Command: `python -m hematovision train --fit-seed 3`" in md
    assert "| 5 | `m@bbb` | 78.95% | 96.77% | no | 63.9 |" in md
    assert "Chosen: `m@aaa`." in md


def test_card_without_a_selection_record_has_no_selection_section():
    md = persistence.render_card(_card(command="python -m hematovision train"))
    assert "Chosen among draws" not in md and "- Command: `python -m hematovision train`" in md

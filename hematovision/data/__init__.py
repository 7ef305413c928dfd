"""The labeled data: our data sets with their recorded split, and a user's labeled images.

``layout``: where the images sit under the data root and how a folder names its class.
``fields``: which Kaggle images are copies of one smear field (the committed table).
``datasets``: discovery, the train/validation/test split rules, the manifest.
``labeled``: a user's folder or zip of class folders, or images plus a labels CSV.
"""

from .datasets import SPLIT_RULES, TEST_SETS, LabeledImage, discover, read_manifest, select, split_counts, test_set
from .labeled import LabeledInputs, labeled_from_csv, labeled_from_path, labeled_from_zip
from .layout import IMAGE_SUFFIXES, KAGGLE_DIR, PBC_DIR, iter_class_folders, normalise_label

__all__ = [
    "IMAGE_SUFFIXES",
    "KAGGLE_DIR",
    "PBC_DIR",
    "SPLIT_RULES",
    "TEST_SETS",
    "LabeledImage",
    "LabeledInputs",
    "discover",
    "iter_class_folders",
    "labeled_from_csv",
    "labeled_from_path",
    "labeled_from_zip",
    "normalise_label",
    "read_manifest",
    "select",
    "split_counts",
    "test_set",
]

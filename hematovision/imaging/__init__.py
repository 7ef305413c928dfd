"""From bytes to the pixels the network sees.

``decode``: safe decoding of untrusted image bytes; ``limits``: how big is too big. ``sources``: files, folders,
uploads and zip archives as lazily-read inputs. ``framing``: the square around the located cell
(shared by training and serving). ``augment``: the training views' geometric, stain and camera jitter.
"""

from .augment import AugmentConfig  # the function augment() stays in its module: the name is the module's
from .decode import DecodedImage, ImageError, decode_image, read_rgb, thumbnail
from .framing import FRAMING_REVISION, FRAMINGS, Jitter, frame_cell, locate_cell, model_input
from .limits import DEFAULT_LIMITS, ImageLimits
from .sources import (
    ArchiveLimits,
    ImageInput,
    ListedFile,
    LoadedInput,
    from_bytes,
    inputs_of_file,
    iter_paths,
    iter_uploads,
    iter_zip,
    list_files,
    load_input,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FRAMINGS",
    "FRAMING_REVISION",
    "ArchiveLimits",
    "AugmentConfig",
    "DecodedImage",
    "ImageError",
    "ImageInput",
    "LoadedInput",
    "ImageLimits",
    "ListedFile",
    "Jitter",
    "decode_image",
    "frame_cell",
    "from_bytes",
    "inputs_of_file",
    "iter_paths",
    "load_input",
    "iter_uploads",
    "iter_zip",
    "list_files",
    "locate_cell",
    "model_input",
    "read_rgb",
    "thumbnail",
]

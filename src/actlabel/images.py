"""Whether an image file can be used, decided without decoding it where the header suffices. Import
checks every image with it and so do the few-shot examples of a task; it lives apart from data.py
so task.py can use it without importing the store (store.py imports task.py)."""

from __future__ import annotations

import re
from pathlib import Path


def image_problem(path: str | Path) -> str | None:
    """Why the image at `path` cannot be used, or None. Reads the header and checks the file's
    structure (PNG chunks) without decoding pixels, so it is cheap at import; a file that fails the
    check is decoded to decide. What this cannot see (a truncated JPEG) fails alone at annotate.

    A header claiming more pixels than Pillow's MAX_IMAGE_PIXELS is refused: decoding it would
    take gigabytes (a decompression bomb), and Pillow itself refuses twice that much.
    """
    import warnings

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if limit and width * height > limit:
                    return f"claims {width * height} pixels ({width}x{height}), more than {limit}: a decompression bomb?"
                try:
                    img.verify()
                except Exception:  # noqa: BLE001
                    # verify() is stricter than decoding (a bad checksum alone fails it): decode to
                    # decide, on these few files only.
                    with Image.open(path) as again:
                        again.load()
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        return f"claims {claimed.group(1) if claimed else 'too many'} pixels, more than {limit}: a decompression bomb?"
    # Pillow reports a corrupt file with whatever its parser tripped on (OSError, SyntaxError,
    # struct.error, ValueError...): any of them means this one file is unusable.
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot be read ({reason})"
    return None

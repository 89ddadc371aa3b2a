"""Per-person files: a folder of cached crops for each person (moved by merge, erased with the person) and the
JPEG thumbnails stored in the database."""

from __future__ import annotations

import shutil
from io import BytesIO
from pathlib import Path

from reid.images import ImageLike
from reid.utils.io import atomic_write_bytes


def thumbnail_jpeg(image: ImageLike, size: int = 128) -> bytes:
    """A JPEG of ``image`` whose longest side is at most ``size``."""
    from PIL import Image

    from reid.images import to_rgb_array

    im = Image.fromarray(to_rgb_array(image, where="thumbnail"))
    im.thumbnail((size, size))
    buf = BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class MediaFolders:
    """The per-person folders under ``root`` (None: this gallery keeps no files)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def person_dir(self, person_id: int) -> Path | None:
        """The folder for this person's files (crops); erased with the person, moved by merge."""
        return None if self.root is None else self.root / str(int(person_id))

    def move(self, remove: int, keep: int) -> None:
        """A merge: ``remove``'s files go to ``keep``'s folder, prefixed with ``<remove>_``."""
        src, dst = self.person_dir(remove), self.person_dir(keep)
        if src is not None and src.exists():
            dst.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                f.replace(dst / f"{remove}_{f.name}")
            shutil.rmtree(src)

    def put_template_image(self, person_id: int, template_id: int, jpeg: bytes) -> bool:
        folder = self.person_dir(person_id)
        if folder is None:
            return False
        atomic_write_bytes(folder / f"t{int(template_id)}.jpg", jpeg)
        return True

    def template_image(self, person_id: int, template_id: int) -> Path | None:
        """The crop kept for a template (a merge prefixes moved files with ``<old person id>_``)."""
        folder = self.person_dir(person_id)
        if folder is None or not folder.exists():
            return None
        name = f"t{int(template_id)}.jpg"
        return next((f for f in folder.iterdir() if f.name == name or f.name.endswith(f"_{name}")), None)

    def erase(self, person_id: int) -> None:
        folder = self.person_dir(person_id)
        if folder is not None and folder.exists():
            shutil.rmtree(folder)

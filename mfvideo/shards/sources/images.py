"""Image folders (`root/<class>/<image>`): each image becomes a single-frame sample."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mfvideo.shards.items import Item, ItemList
from mfvideo.shards.sources.common import SourceError, load_class_map, walk_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageFolderSource:
    root: str
    class_map: str | None = None  # default: sorted sub-folder names

    name = "images"

    def list_items(self) -> ItemList:
        if not os.path.isdir(self.root):
            raise SourceError(f"image folder {self.root} does not exist")
        folders = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        classes = load_class_map(self.class_map) if self.class_map else folders
        items = []
        for label, name in enumerate(classes):
            folder = os.path.join(self.root, name)
            if not os.path.isdir(folder):
                raise SourceError(f"class {name!r} has no folder {folder}")
            for directory, stem, file in walk_files(folder, IMAGE_EXTENSIONS):
                relative = os.path.relpath(os.path.join(directory, stem), self.root)
                items.append(
                    Item(id=relative, kind="image", label=label, label_name=name, path=os.path.join(directory, file))
                )
        return ItemList(items=items, classes=classes)

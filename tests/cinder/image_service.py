"""A small in-memory image service with the methods of Cinder's
GlanceImageService that image transfer uses (show, download, update), so the
tests need no Glance.  Images are bytes plus metadata; an uploaded image is
kept as its size, its first ``KEEP`` bytes and the count of non-zero bytes
after those (volumes are 1 GiB)."""

from __future__ import annotations

from typing import Any

KEEP = 16 << 20


class MemoryImageService:
    def __init__(self) -> None:
        self.images: dict[str, dict[str, Any]] = {}
        self.data: dict[str, bytes] = {}
        self.uploads: dict[str, tuple[int, int, bytes]] = {}

    def add(self, image_id: str, data: bytes, disk_format: str = "raw",
            container_format: str = "bare", locations: list[str] | None = None) -> dict[str, Any]:
        meta = {"id": image_id, "disk_format": disk_format, "status": "active",
                "container_format": container_format, "size": len(data),
                "locations": [{"url": u, "metadata": {}} for u in locations or []]}
        self.images[image_id] = meta
        self.data[image_id] = data
        return meta

    def show(self, context: Any, image_id: str) -> dict[str, Any]:
        return dict(self.images[image_id])

    def download(self, context: Any, image_id: str, data: Any = None) -> Any:
        body = self.data[image_id]
        if data is None:
            return iter([body])
        for start in range(0, len(body), 1 << 20):
            data.write(body[start:start + (1 << 20)])
        return None

    def update(self, context: Any, image_id: str, image_meta: dict[str, Any], data: Any = None,
               purge_props: bool = True, store_id: str | None = None,
               base_image_ref: str | None = None) -> dict[str, Any]:
        if data is not None:
            size, nonzero, head = 0, 0, bytearray()
            while True:
                chunk = data.read(8 << 20)
                if not chunk:
                    break
                size += len(chunk)
                kept = chunk[:max(0, KEEP - len(head))]
                head += kept
                nonzero += len(chunk) - len(kept) - chunk.count(0, len(kept))
            self.uploads[image_id] = (size, nonzero, bytes(head))
        self.images[image_id].update(image_meta)
        return dict(self.images[image_id])


class FileImageService(MemoryImageService):
    """Images that are files: ``download`` streams the file named by the image
    id, ``update`` writes the uploaded data to that path."""

    def show(self, context: Any, image_id: str) -> dict[str, Any]:
        return {"id": image_id, "disk_format": "raw", "container_format": "bare",
                "status": "active"}

    def download(self, context: Any, image_id: str, data: Any = None) -> Any:
        with open(image_id, "rb") as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    return None
                data.write(chunk)

    def update(self, context: Any, image_id: str, image_meta: dict[str, Any], data: Any = None,
               purge_props: bool = True, store_id: str | None = None,
               base_image_ref: str | None = None) -> dict[str, Any]:
        with open(image_id, "wb") as out:
            while True:
                chunk = data.read(8 << 20)
                if not chunk:
                    break
                out.write(chunk)
        return self.show(context, image_id)

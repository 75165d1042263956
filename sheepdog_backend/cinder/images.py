"""Images for SheepdogCinderDriver, through Cinder's image service.

Cinder's generic image copies attach the volume through os-brick, which has no
Sheepdog connector any more; these go through the core driver instead:

* ``clone_image``: a copy-on-write clone when one of the image's locations is a
  Sheepdog snapshot of this cluster (the core driver's backing-reference check
  decides) and the image is raw; otherwise ``(None, False)`` and Cinder falls
  back to ``copy_image_to_volume``.
* ``copy_image_to_volume``: Cinder's ``image_utils.fetch`` downloads the image
  into ``image_conversion_dir``; the core driver inspects the file (format and
  safety, before any converter sees it) and writes it into the volume.
* ``copy_volume_to_image``: the core driver exports the volume as a raw file in
  ``image_conversion_dir``; Cinder's ``upload_volume`` converts it to the
  image's disk_format when needed and uploads it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from cinder.image import image_utils
from cinder.volume import volume_utils

from sheepdog_backend.cinder.translate import cinder_errors, core_volume, vdi_name
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import InvalidBackingImage

LOG = logging.getLogger(__name__)


def _location_urls(image_location: Any) -> list[str]:
    if not image_location:
        return []
    url, locations = (image_location if isinstance(image_location, (tuple, list))
                      and len(image_location) == 2 else (image_location, None))
    urls = [url] + [loc.get("url") for loc in (locations or []) if isinstance(loc, dict)]
    return [u for u in urls if isinstance(u, str) and u.startswith("sheepdog:")]


def clone_image(core: SheepdogDriver, volume: Any, image_location: Any,
                image_meta: Any) -> tuple[dict[str, Any] | None, bool]:
    urls = _location_urls(image_location)
    disk_format = (image_meta or {}).get("disk_format")
    if not urls or disk_format != "raw":
        LOG.debug("image of volume %s is not a raw Sheepdog image (%s, %s): not cloned",
                  volume.id, disk_format, urls)
        return None, False
    for url in urls:
        with cinder_errors(volume=volume):
            try:
                core.create_volume(core_volume(volume), backing=url)
            except InvalidBackingImage as exc:  # not a snapshot of this cluster
                LOG.info("image location %s cannot be cloned: %s", url, exc)
                continue
        return {"provider_location": vdi_name(volume)}, True
    return None, False


def copy_image_to_volume(core: SheepdogDriver, context: Any, volume: Any,
                         image_service: Any, image_id: str) -> None:
    volume_utils.image_conversion_dir()  # makes the directory when missing
    with image_utils.temporary_file(prefix="sheepdog-image-") as path:
        image_utils.fetch(context, image_service, image_id, path, None, None)
        with cinder_errors(volume=volume, image_id=image_id):
            core.copy_image_to_volume(core_volume(volume), path)


def copy_volume_to_image(core: SheepdogDriver, context: Any, volume: Any,
                         image_service: Any, image_meta: dict[str, Any]) -> None:
    fd, path = tempfile.mkstemp(prefix="sheepdog-export-", suffix=".raw",
                                dir=volume_utils.image_conversion_dir())
    os.close(fd)  # the core driver replaces it with the finished export
    try:
        with cinder_errors(volume=volume):
            core.copy_volume_to_image(core_volume(volume), path)
        volume_utils.upload_volume(context, image_service, image_meta, path, volume,
                                   run_as_root=False)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

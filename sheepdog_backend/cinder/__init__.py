"""The OpenStack Cinder adapter: ``SheepdogCinderDriver``.

cinder.conf names it as ``volume_driver =
sheepdog_backend.cinder.SheepdogCinderDriver``.  This is the only package that
imports Cinder; Cinder is the optional ``[cinder]`` extra
(``pip install 'sheepdog-backend[cinder]'``, Python 3.11 or newer).  The class
is imported on first access, so ``sheepdog_backend.cinder.options`` (the
options and the cinder.conf sample) works without Cinder installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SheepdogCinderDriver"]

MISSING_CINDER = ("sheepdog_backend.cinder needs OpenStack Cinder (29 or newer, Python >= 3.11): "
                  "install the extra with pip install 'sheepdog-backend[cinder]'")


def __getattr__(name: str) -> Any:
    if name != "SheepdogCinderDriver":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import cinder.volume.driver  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{MISSING_CINDER} ({exc})", name=exc.name) from exc
    from sheepdog_backend.cinder.driver import SheepdogCinderDriver

    return SheepdogCinderDriver

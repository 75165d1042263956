"""Load volume drivers from a Cinder-style ini file.

How it works: each load builds its own ``oslo_config.cfg.ConfigOpts`` (never
the global CONF) over one file.  ``[DEFAULT] enabled_backends`` names the
backend sections; each section's ``volume_driver`` is an entry-point name in
``sheepdog_backend.volume_drivers`` (resolved with stevedore) or a dotted class
path.  The backend options (``opts.BACKEND_OPTS`` plus the driver's
``get_driver_options()``) are registered under the section's name and under
``[backend_defaults]``; a value set in the backend section wins, then one set in
``[backend_defaults]``, then the option's default.  Every value is read eagerly
so that a bad one fails the load with the file, section and option named,
instead of failing later inside an operation.  Keys a backend section does not
know are errors too (a typo would otherwise silently fall back to a default).
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Mapping
from typing import Any

from oslo_config import cfg
from stevedore import driver as stevedore_driver
from stevedore import exception as stevedore_exception

from sheepdog_backend import opts
from sheepdog_backend.driver.base import BackendConfiguration, VolumeDriver
from sheepdog_backend.exception import ConfigError, DriverLoadError, InvalidInput

NAMESPACE = "sheepdog_backend.volume_drivers"


def load_backends(config_file: str, *, config_dir: str | None = None
                  ) -> dict[str, VolumeDriver]:
    """Every backend of ``enabled_backends``, in order, constructed (not set up)."""
    loaded = _LoadedFile(config_file, config_dir)
    return {name: loaded.build(name) for name in loaded.enabled}


def load_backend(config_file: str, backend: str | None = None, *,
                 config_dir: str | None = None) -> VolumeDriver:
    """One backend: ``backend`` or, when None, the first of enabled_backends."""
    loaded = _LoadedFile(config_file, config_dir)
    if backend is None:
        backend = loaded.enabled[0]
    elif backend not in loaded.enabled:
        raise ConfigError(f"{config_file}: backend {backend!r} is not in [DEFAULT] "
                          f"enabled_backends ({', '.join(loaded.enabled)})")
    return loaded.build(backend)


def enabled_backends(config_file: str, *, config_dir: str | None = None) -> list[str]:
    """The names in ``[DEFAULT] enabled_backends`` (validated like a load)."""
    return list(_LoadedFile(config_file, config_dir).enabled)


def resolve_driver_class(name_or_path: str) -> type[VolumeDriver]:
    """The driver class for an entry-point name or a dotted ``module.Class`` path."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise DriverLoadError("volume_driver is empty")
    name_or_path = name_or_path.strip()
    if "." in name_or_path or ":" in name_or_path:
        return _import_class(name_or_path)
    failures: list[BaseException] = []

    def on_failure(_manager: Any, _entrypoint: Any, exc: BaseException) -> None:
        failures.append(exc)

    try:
        manager = stevedore_driver.DriverManager(
            namespace=NAMESPACE, name=name_or_path, invoke_on_load=False,
            on_load_failure_callback=on_failure)
    except stevedore_exception.NoMatches:
        if failures:
            raise DriverLoadError(f"volume driver {name_or_path!r} failed to import: "
                                  f"{failures[0]!r}") from failures[0]
        raise DriverLoadError(
            f"no volume driver named {name_or_path!r} in entry-point namespace {NAMESPACE} "
            f"(known: {', '.join(available_drivers()) or 'none'})") from None
    except stevedore_exception.MultipleMatches:
        raise DriverLoadError(f"more than one volume driver is registered as "
                              f"{name_or_path!r} in {NAMESPACE}") from None
    return _check_class(manager.driver, name_or_path)


def load_driver(name_or_path: str, configuration: BackendConfiguration | Mapping[str, Any],
                backend_name: str) -> VolumeDriver:
    """Resolve and construct a driver (stevedore for names)."""
    if not isinstance(configuration, BackendConfiguration):
        configuration = BackendConfiguration(configuration)
    cls = resolve_driver_class(name_or_path)
    return cls(configuration, backend_name=backend_name)


def available_drivers() -> list[str]:
    from stevedore import ExtensionManager

    return sorted(ExtensionManager(NAMESPACE, invoke_on_load=False).names())


def _import_class(path: str) -> type[VolumeDriver]:
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name or not attr:
        raise DriverLoadError(f"volume driver path {path!r} is not 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DriverLoadError(f"volume driver {path!r}: cannot import {module_name!r}: "
                              f"{exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise DriverLoadError(f"volume driver {path!r}: module {module_name!r} has no "
                              f"{attr!r}") from None
    return _check_class(obj, path)


def _check_class(obj: object, name: str) -> type[VolumeDriver]:
    if not (isinstance(obj, type) and issubclass(obj, VolumeDriver)):
        raise DriverLoadError(f"volume driver {name!r} is {obj!r}, not a VolumeDriver "
                              "subclass")
    if getattr(obj, "__abstractmethods__", None):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise DriverLoadError(f"volume driver {name!r} does not implement: {missing}")
    return obj


class _LoadedFile:
    """One parsed ini file and its private ConfigOpts."""

    def __init__(self, config_file: str, config_dir: str | None = None) -> None:
        self.path = os.fspath(config_file)
        files = [self.path, *_dir_files(config_dir)]
        self.raw: dict[str, dict[str, list[str]]] = {}
        for path in files:
            if not os.path.isfile(path):
                raise ConfigError(f"{path}: no such configuration file")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"{path}: configuration file is not readable")
            try:
                cfg.ConfigParser(path, self.raw).parse()
            except cfg.ParseError as exc:
                raise ConfigError(f"{path}: cannot parse: {exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read: {exc}") from None
        if len(files) > 1:
            self.path = f"{self.path} (+ {len(files) - 1} file(s) of {config_dir})"
        self._check_default_section()
        self.conf = cfg.ConfigOpts()
        self.conf.register_opts(opts.DEFAULT_OPTS)
        self.conf.register_opts(opts.BACKEND_OPTS, group=opts.BACKEND_DEFAULTS_GROUP)
        try:
            self.conf(args=[], project="sheepdog-backend", default_config_files=files,
                      default_config_dirs=[], use_env=False)
        except cfg.Error as exc:
            raise ConfigError(f"{self.path}: {exc}") from None
        raw_enabled = self._value("DEFAULT", opts.DEFAULT_OPTS[0])
        self.enabled = [name.strip() for name in raw_enabled if name.strip()]
        if not self.enabled:
            raise ConfigError(f"{self.path}: [DEFAULT] enabled_backends is empty: name at "
                              "least one backend section")
        seen: set[str] = set()
        for name in self.enabled:
            if name in seen:
                raise ConfigError(f"{self.path}: [DEFAULT] enabled_backends names "
                                  f"{name!r} twice")
            seen.add(name)
            if name in ("DEFAULT", opts.BACKEND_DEFAULTS_GROUP):
                raise ConfigError(f"{self.path}: [DEFAULT] enabled_backends: {name!r} "
                                  "cannot be a backend section")
            if name not in self.raw:
                raise ConfigError(f"{self.path}: [DEFAULT] enabled_backends names "
                                  f"{name!r} but the file has no [{name}] section")

    def _check_default_section(self) -> None:
        """[DEFAULT] holds only enabled_backends.  oslo.config does not let
        [DEFAULT] values reach options of other groups, so a backend option put
        there would be silently ignored: refuse it, and say where it belongs."""
        known = {o.dest for o in opts.DEFAULT_OPTS}
        backend_opts = {o.dest for o in opts.BACKEND_OPTS}
        for key in self.raw.get("DEFAULT", {}):
            dest = key.replace("-", "_")
            if dest in known:
                continue
            if dest in backend_opts:
                raise ConfigError(
                    f"{self.path}: [DEFAULT] {key}: backend options are not read from "
                    "[DEFAULT] (oslo.config keeps groups apart); put it in "
                    f"[{opts.BACKEND_DEFAULTS_GROUP}] for every backend, or in a backend's "
                    "own section")
            close = difflib.get_close_matches(dest, sorted(known | backend_opts), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{self.path}: [DEFAULT] {key}: unknown option; [DEFAULT] "
                              f"holds only enabled_backends{hint}")

    def _value(self, group: str, opt: cfg.Opt) -> Any:
        try:
            if group == "DEFAULT":
                return self.conf[opt.dest]
            return self.conf[group][opt.dest]
        except (cfg.ConfigFileValueError, ValueError) as exc:
            raw = self.raw.get(group, {}).get(opt.name, ["?"])[-1]
            detail = str(exc).rsplit(" is not valid: ", 1)[-1]
            raise ConfigError(f"{self.path}: [{group}] {opt.name}: invalid value {raw!r}: "
                              f"{detail}") from None

    def _where(self, section: str, opt: cfg.Opt) -> str | None:
        """Section whose value applies: the backend's, [backend_defaults], or None."""
        for group in (section, opts.BACKEND_DEFAULTS_GROUP):
            keys = {k.replace("-", "_") for k in self.raw.get(group, {})}
            if opt.dest in keys or opt.name in keys:
                return group
        return None

    def build(self, section: str) -> VolumeDriver:
        driver_opt = opts.DRIVER_OPTS[0]
        self.conf.register_opts(opts.BACKEND_OPTS, group=section)
        where = self._where(section, driver_opt) or section
        driver_name = self._value(where, driver_opt) if self._where(section, driver_opt) \
            else driver_opt.default
        try:
            cls = resolve_driver_class(driver_name)
        except DriverLoadError as exc:
            raise DriverLoadError(f"{self.path}: [{where}] volume_driver: {exc}") from None
        extra = list(cls.get_driver_options())
        known_names = {o.dest for o in opts.BACKEND_OPTS}
        extra = [o for o in extra if o.dest not in known_names]
        if extra:
            for group in (section, opts.BACKEND_DEFAULTS_GROUP):
                self.conf.register_opts(extra, group=group)
        all_opts = list(opts.BACKEND_OPTS) + extra
        known = {o.dest for o in all_opts} | {o.name for o in all_opts}
        for group in (section, opts.BACKEND_DEFAULTS_GROUP):
            for key in self.raw.get(group, {}):
                if key.replace("-", "_") not in known:
                    close = difflib.get_close_matches(key, sorted(known), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"{self.path}: [{group}] {key}: unknown option for "
                                      f"volume driver {driver_name!r}{hint}")
        values: dict[str, Any] = {}
        for opt in all_opts:
            source = self._where(section, opt)
            values[opt.dest] = self._value(source, opt) if source else opt.default
        for name in ("volume_name_template", "snapshot_name_template"):
            try:
                opts.validate_template(name, values[name])
            except InvalidInput as exc:
                place = self._where(section, _opt_named(name)) or section
                raise ConfigError(f"{self.path}: [{place}] {name}: {exc}") from None
        if not values.get("volume_backend_name"):
            values["volume_backend_name"] = section
        configuration = BackendConfiguration(values, config_file=self.path, section=section)
        try:
            return cls(configuration, backend_name=section)
        except (ConfigError, DriverLoadError):
            raise
        except InvalidInput as exc:
            raise ConfigError(f"{self.path}: [{section}]: {exc}") from None


def _dir_files(config_dir: str | None) -> list[str]:
    """The *.conf files of ``config_dir`` in name order (oslo's --config-dir)."""
    if config_dir is None:
        return []
    if not os.path.isdir(config_dir):
        raise ConfigError(f"{config_dir}: no such configuration directory")
    return [os.path.join(config_dir, name) for name in sorted(os.listdir(config_dir))
            if name.endswith(".conf") and os.path.isfile(os.path.join(config_dir, name))]


def _opt_named(name: str) -> cfg.Opt:
    for opt in opts.BACKEND_OPTS:
        if opt.dest == name:
            return opt
    raise KeyError(name)

"""Finding plugins and the backends they provide.

Built-in plugins are registered exactly like installed ones, through the hooks in
:mod:`rhapsody.hookspecs`. Installed plugins come from the ``rhapsody`` entry-point group.

The environment variable ``RHAPSODY_LOAD_PLUGINS`` chooses which installed plugins load: unset
loads all of them, an empty string loads none (test suites use this so that whatever happens to
be installed cannot leak into a test run), and a comma-separated list of entry-point names loads
only those.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .backend import BaseBackend
from .errors import BackendUnavailableError

BUILTIN_PLUGINS = ("rhapsody.builtin.concurrent", "rhapsody.builtin.noop")

# The distributions of this project that provide backends, by backend name: an error for a name
# that is not installed suggests the right one, and never a made-up "rhapsody-<name>".
KNOWN_DISTRIBUTIONS = {"dask": "rhapsody-dask", "dragon": "rhapsody-dragon",
                       "radical": "rhapsody-radical", "vllm": "rhapsody-vllm"}

pm = pluggy.PluginManager("rhapsody")
pm.add_hookspecs(hookspecs)

# Re-entrant: a plugin that calls get_backend() or Session() while it is being imported comes back
# into load_plugins() on the loading thread, which must not wait for itself. Other threads wait
# here until loading has finished.
_load_lock = threading.RLock()
_in_progress = False  # only the loading thread can see this True: the others wait on the lock
_importing: str | None = None  # the entry point being imported, while plugins load
# Bumped whenever run-time plugins come or go, so sessions re-read their hooks (cheaply) then.
generation = 0
_loaded = False
_load_failures: dict[str, tuple[str | None, str | None, str]] = {}
_plugin_dists: dict[str, tuple[str | None, str | None]] = {}
_not_selected: set[str] = set()  # installed plugins that RHAPSODY_LOAD_PLUGINS left out


class RhapsodyPluginWarning(UserWarning):
    """An installed plugin was left out; ``rhapsody backends`` shows it as failed, with why."""


@dataclass(frozen=True)
class BackendInfo:
    """What is known about one backend name: where it comes from and whether it can run here.

    ``reason`` says why it cannot run (``available`` is False); ``note`` qualifies a backend that
    can (e.g. a mode it lacks here); ``engine_versions`` names the engine packages it found.

    A ``BackendInfo`` is true exactly when the backend is available, so
    ``[name for name, ok in discover_backends().items() if ok]`` lists those that can run here.
    """

    name: str
    backend_class: type[BaseBackend] | None
    distribution: str | None
    version: str | None
    available: bool
    reason: str | None = None
    note: str | None = None
    engine_versions: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.available


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_plugins() -> None:
    """Register the built-in plugins and the selected installed ones (once per process).

    A plugin that implements a hook that does not exist (a misspelt name) or implements one with
    the wrong arguments is left out with a :class:`RhapsodyPluginWarning` and listed as failed;
    the others load. Called again from the thread that is loading (a plugin that uses rhapsody
    while it is being imported), it returns at once: what is registered so far (the built-ins
    come first) is all there is until loading ends.
    """
    global _loaded, _in_progress, generation
    left_out: list[tuple[str, str]] = []
    with _load_lock:
        if _loaded or _in_progress:
            return
        _in_progress = True
        try:
            _load_all(left_out)
            _loaded = True
            # A session made by a plugin while loading saw only part of the hooks.
            generation += 1
        finally:
            _in_progress = False
    # Outside the lock: a warnings filter set to "error" must not leave loading half done.
    for name, why in left_out:
        warnings.warn(f"rhapsody plugin {name!r} left out: {why}", RhapsodyPluginWarning, stacklevel=2)


def _load_all(left_out: list[tuple[str, str]]) -> None:
    global _importing
    core = importlib.metadata.version("rhapsody-core") if _has_dist("rhapsody-core") else None
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        _plugin_dists[module_name] = ("rhapsody-core", core)
    selection = os.environ.get("RHAPSODY_LOAD_PLUGINS")
    wanted = None if selection is None else {n.strip() for n in selection.split(",") if n.strip()}
    for entry_point in importlib.metadata.entry_points(group="rhapsody"):
        if wanted is not None and entry_point.name not in wanted:
            _not_selected.add(entry_point.name)
            continue
        if pm.has_plugin(entry_point.name):
            continue
        dist = getattr(entry_point, "dist", None)
        origin = (dist.name, dist.version) if dist is not None else (None, None)
        _importing = entry_point.name
        try:
            plugin = entry_point.load()
            pm.register(plugin, name=entry_point.name)
        except pluggy.PluginValidationError as exc:  # a hook with the wrong arguments
            why = _invalid_hook(exc)
            _load_failures[entry_point.name] = (*origin, why)
            left_out.append((entry_point.name, why))
            continue
        except Exception as exc:  # a broken plugin must not take the others down
            _load_failures[entry_point.name] = (*origin, _describe(exc))
            continue
        finally:
            _importing = None
        _plugin_dists[entry_point.name] = origin
    # A plugin with a misspelt hook is removed (and listed as failed) so that it is reported here
    # once, instead of failing every Session() and every later register_plugin() on its account.
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            pm.unregister(exc.plugin)
            why = _invalid_hook(exc)
            _load_failures[name] = (*_plugin_dists.pop(name, (None, None)), why)
            left_out.append((name, why))


def _invalid_hook(exc: pluggy.PluginValidationError) -> str:
    hooks = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("rhapsody_")))
    return f"{exc} (hooks that rhapsody defines: {hooks})"


def _has_dist(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object at run time (a module or an instance with hook methods).

    Raises:
        pluggy.PluginValidationError: the plugin implements a hook that does not exist (a
            misspelt name) or one with the wrong arguments; it is not registered.
        ValueError: a plugin of that name is already registered.
    """
    global generation
    load_plugins()
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        pm.unregister(plugin)
        raise
    generation += 1


def unregister_plugin(plugin: Any) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    global generation
    pm.unregister(plugin)
    generation += 1


def _backend_classes() -> tuple[dict[str, BackendInfo], dict[str, str]]:
    load_plugins()
    found: dict[str, BackendInfo] = {}
    conflicts: dict[str, str] = {}
    for impl in pm.hook.rhapsody_register_backends.get_hookimpls():
        dist, version = _plugin_dists.get(impl.plugin_name, (None, None))
        try:
            classes: list[Any] = list(impl.function())  # type: ignore[call-overload]
        except Exception as exc:
            found.setdefault(impl.plugin_name, BackendInfo(
                impl.plugin_name, None, dist, version, False,
                f"plugin failed to list its backends: {_describe(exc)}"))
            continue
        for cls in classes:
            name = getattr(cls, "name", None)
            if not (isinstance(cls, type) and issubclass(cls, BaseBackend)) or not isinstance(name, str):
                # Shown as that plugin's failure: one bad plugin must not hide every backend.
                found.setdefault(impl.plugin_name, BackendInfo(
                    impl.plugin_name, None, dist, version, False,
                    f"plugin registered {cls!r}, which is not a BaseBackend subclass with a "
                    "string class attribute 'name'"))
                continue
            if name in found and found[name].backend_class is not cls:
                conflicts[name] = (
                    f"two plugins register a backend named {name!r}: "
                    f"{found[name].distribution or '?'} and {dist or impl.plugin_name}"
                )
                continue
            found[name] = BackendInfo(name, cls, dist, version, True)
    for ep_name, (dist, version, why) in _load_failures.items():
        found.setdefault(ep_name, BackendInfo(ep_name, None, dist, version, False,
                                              f"plugin failed to load: {why}"))
    return found, conflicts


def discover_backends() -> dict[str, BackendInfo]:
    """Every backend name known here, with whether it can run on this machine and, if not, why.

    Availability is real: each backend's ``check_available()`` runs (for an engine backend this
    imports the engine), so a missing or broken engine shows its own error message.
    """
    found, conflicts = _backend_classes()
    result: dict[str, BackendInfo] = {}
    for name, info in sorted(found.items()):
        if name in conflicts:
            info = BackendInfo(name, None, info.distribution, info.version, False, conflicts[name])
        elif info.backend_class is not None:
            cls = info.backend_class
            try:
                note = cls.check_available()
            except Exception as exc:
                info = BackendInfo(name, cls, info.distribution, info.version, False, _describe(exc))
            else:
                try:
                    versions = dict(cls.engine_versions())
                except Exception as exc:
                    versions = {"?": _describe(exc)}
                info = BackendInfo(name, cls, info.distribution, info.version, True, None,
                                   note if isinstance(note, str) else None, versions)
        result[name] = info
    return result


def get_backend(name: str, /, **options: Any) -> BaseBackend:
    """Make a backend instance by name; ``await`` it (or give it to a Session) to start it.

    ``name`` is the registry name; ``options`` go to the backend's constructor, including its
    own ``name=`` (the instance's name in a session): ``get_backend("concurrent", name="io")``.

    Raises:
        BackendUnavailableError: no installed backend has that name, or it cannot run here
            (the message carries the engine's own reason).
        TypeError: an option the backend does not take (the message names the backend and the
            options it takes), or one of the wrong type.
    """
    found, conflicts = _backend_classes()
    info = found.get(name)
    if info is None:
        known = ", ".join(sorted(found)) or "none"
        if _in_progress:
            asking = f"plugin {_importing!r}" if _importing else "a plugin"
            raise BackendUnavailableError(
                f"no backend named {name!r} is known yet: plugins are still loading ({asking} "
                f"asked for it while being imported; known so far: {known}). A plugin must not "
                "use rhapsody at import time: do that inside a function"
            )
        if name in _not_selected:
            raise BackendUnavailableError(
                f"backend {name!r} is installed but not loaded: RHAPSODY_LOAD_PLUGINS="
                f"{os.environ.get('RHAPSODY_LOAD_PLUGINS', '')!r} does not name it (known: {known})"
            )
        raise BackendUnavailableError(_not_installed(name, known))
    if name in conflicts:
        raise BackendUnavailableError(conflicts[name])
    if info.backend_class is None:
        raise BackendUnavailableError(f"backend {name!r} cannot be used: {info.reason}")
    try:
        info.backend_class.check_available()
    except Exception as exc:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {_describe(exc)}") from exc
    try:
        return info.backend_class(**options)
    except TypeError:
        unknown = _unknown_options(info.backend_class, options)
        if not unknown:
            raise  # raised inside the constructor, about something else: not ours to reword
        raise TypeError(_unknown_options_message(name, info.backend_class, unknown)) from None


def _not_installed(name: str, known: str) -> str:
    distribution = KNOWN_DISTRIBUTIONS.get(name)
    if distribution is not None:
        # The clone path first: the distributions are not on PyPI yet (see README.md).
        return (f"no backend named {name!r} is installed (known: {known}); it comes with the "
                f"{distribution} distribution: pip install ./packages/{distribution} from a clone "
                f"of rhapsody (pip install {distribution} once it is published)")
    offered = ", ".join(f"{dist} ({backend})" for backend, dist in KNOWN_DISTRIBUTIONS.items())
    return (f"no backend named {name!r} is installed (known: {known}); rhapsody's own backends "
            f"come with {offered}, and other packages' backends register through the 'rhapsody' "
            "entry-point group: install the one that provides it")


def _keyword_parameters(cls: type) -> tuple[list[str], bool] | None:
    """The constructor's keyword names and whether it takes ``**kwargs``; None if unreadable."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _unknown_options(cls: type, options: Mapping[str, Any]) -> list[str]:
    # Only names the signature cannot bind make the call itself fail: a TypeError raised while
    # the constructor runs (a wrong type of a valid option) has none and keeps its own message.
    described = _keyword_parameters(cls)
    if described is None or described[1]:
        return []
    return [key for key in options if key not in described[0]]


def _unknown_options_message(name: str, cls: type, unknown: list[str]) -> str:
    valid = _keyword_parameters(cls)
    names = valid[0] if valid else []
    which = ("option " if len(unknown) == 1 else "options ") + ", ".join(repr(key) for key in unknown)
    takes = f"its options are: {', '.join(names)}" if names else "it takes no options"
    return f"backend {name!r} ({cls.__name__}) has no {which}; {takes}"


def hook_if_implemented(name: str) -> Any:
    """The hook caller for ``name``, or ``None`` when no plugin implements it (zero hot-path cost)."""
    load_plugins()
    caller = getattr(pm.hook, name)
    return caller if caller.get_hookimpls() else None


def backend_distributions() -> Mapping[str, tuple[str | None, str | None]]:
    """Plugin name -> (distribution, version), for reports."""
    load_plugins()
    return dict(_plugin_dists)

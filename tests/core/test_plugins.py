"""Plugins: built-ins through the hook, entry-point discovery from real installed distributions,
RHAPSODY_LOAD_PLUGINS, broken plugins, duplicate names, availability.

Plugins load once per process, so everything about loading runs in a fresh ``python`` process
whose ``sys.path`` holds distributions written into a temporary directory (a ``*.dist-info``
with an ``entry_points.txt``: what ``pip install`` leaves behind).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pluggy
import pytest

import rhapsody
from rhapsody import BackendUnavailableError, BaseBackend, hookimpl
from rhapsody.plugins import pm

MODULES = {
    "tinyplug_mod": '''
        from rhapsody import BaseBackend, hookimpl

        class TinyBackend(BaseBackend):
            """Runs functions inline at submit."""
            name = "tiny"
            task_kinds = frozenset({"function"})

            async def submit_tasks(self, tasks):
                for task in tasks:
                    task["return_value"] = task["function"](*task["args"], **task["kwargs"])
                self.report([(task, "DONE") for task in tasks])

            async def cancel_task(self, task):
                return False

        @hookimpl
        def rhapsody_register_backends():
            return [TinyBackend]
    ''',
    "brokenplug_mod": '''
        import engine_that_is_not_here  # noqa: F401
    ''',
    "misspelt_mod": '''
        from rhapsody import hookimpl

        @hookimpl
        def rhapsody_register_backend():
            return []
    ''',
    "badargs_mod": '''
        from rhapsody import hookimpl

        @hookimpl
        def rhapsody_validate_task(task, backendd):
            return None
    ''',
    "dupe_a_mod": '''
        from rhapsody import BaseBackend, hookimpl

        class TwinA(BaseBackend):
            name = "twin"
            async def submit_tasks(self, tasks): pass
            async def cancel_task(self, task): return False

        @hookimpl
        def rhapsody_register_backends():
            return [TwinA]
    ''',
    "dupe_b_mod": '''
        from rhapsody import BaseBackend, hookimpl

        class TwinB(BaseBackend):
            name = "twin"
            async def submit_tasks(self, tasks): pass
            async def cancel_task(self, task): return False

        @hookimpl
        def rhapsody_register_backends():
            return [TwinB]
    ''',
    "needsengine_mod": '''
        from rhapsody import BaseBackend, hookimpl

        class NeedsEngine(BaseBackend):
            name = "needsengine"
            @classmethod
            def check_available(cls):
                import heavy_engine_not_installed  # noqa: F401
            async def submit_tasks(self, tasks): pass
            async def cancel_task(self, task): return False

        @hookimpl
        def rhapsody_register_backends():
            return [NeedsEngine]
    ''',
}

# distribution -> (version, {entry-point name: module})
DISTRIBUTIONS = {
    "rhapsody-tinyplug": ("1.2.3", {"tinyplug": "tinyplug_mod"}),
    "rhapsody-badplugs": ("0.0.1", {"brokenplug": "brokenplug_mod", "misspelt": "misspelt_mod",
                                    "badargs": "badargs_mod", "dupe_a": "dupe_a_mod",
                                    "dupe_b": "dupe_b_mod", "needsengine": "needsengine_mod"}),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("site")
    for module, source in MODULES.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    for dist, (version, entry_points) in DISTRIBUTIONS.items():
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[rhapsody]"] + [f"{name} = {module}" for name, module in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def run_python(site: pathlib.Path, code: str, *, load: str | None) -> Any:
    """Run ``code`` in a fresh interpreter that sees ``site``; return what it prints as JSON."""
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("RHAPSODY_LOAD_PLUGINS", None)
    if load is not None:
        env["RHAPSODY_LOAD_PLUGINS"] = load
    prelude = textwrap.dedent('''
        import asyncio, json, sys
        import pluggy
        import rhapsody
        def describe(infos):
            return {name: {"available": i.available, "reason": i.reason, "dist": i.distribution,
                           "version": i.version} for name, i in infos.items()}
        def out(value):
            print(json.dumps(value))
    ''')
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- entry points, from a real distribution --------------------------------------------------


def test_entry_point_plugin_is_discovered_and_runs(site: pathlib.Path) -> None:
    seen = run_python(site, '''
        infos = describe(rhapsody.discover_backends())
        async def main():
            async with rhapsody.Session(backends=["tiny"]) as session:
                task = rhapsody.ComputeTask(function=pow, args=(2, 10))
                await session.submit_tasks([task])
                return (await task).return_value
        out({"infos": infos, "result": asyncio.run(main())})
    ''', load="tinyplug")
    infos = seen["infos"]
    assert infos["tiny"] == {"available": True, "reason": None, "dist": "rhapsody-tinyplug", "version": "1.2.3"}
    assert infos["concurrent"]["dist"] == infos["noop"]["dist"] == "rhapsody-core"
    assert set(infos) == {"concurrent", "noop", "tiny"}  # the bad plugins were not selected
    assert seen["result"] == 1024


def test_unset_selection_loads_every_installed_plugin(site: pathlib.Path, tmp_path: pathlib.Path) -> None:
    only_good = tmp_path / "site"
    only_good.mkdir()
    (only_good / "tinyplug_mod.py").write_text((site / "tinyplug_mod.py").read_text())
    info = site / "rhapsody_tinyplug-1.2.3.dist-info"
    (only_good / info.name).mkdir()
    for item in info.iterdir():
        (only_good / info.name / item.name).write_text(item.read_text())
    seen = run_python(only_good, 'out(sorted(rhapsody.discover_backends()))', load=None)
    assert "tiny" in seen and {"concurrent", "noop"} <= set(seen)


def test_empty_selection_loads_no_installed_plugin(site: pathlib.Path) -> None:
    seen = run_python(site, '''
        errors = []
        for name in ("tinyplug", "tiny"):
            try:
                rhapsody.get_backend(name)
            except rhapsody.BackendUnavailableError as exc:
                errors.append(str(exc))
        out([sorted(rhapsody.discover_backends()), errors])
    ''', load="")
    assert seen[0] == ["concurrent", "noop"]
    assert seen[1] == [
        # installed, but the selection leaves it out: say so rather than "pip install it"
        "backend 'tinyplug' is installed but not loaded: RHAPSODY_LOAD_PLUGINS='' does not name it "
        "(known: concurrent, noop)",
        "no backend named 'tiny' is installed (known: concurrent, noop); rhapsody's own backends "
        "come with rhapsody-dask (dask), rhapsody-dragon (dragon), rhapsody-radical (radical), "
        "rhapsody-vllm (vllm), and other packages' backends register through the 'rhapsody' "
        "entry-point group: install the one that provides it",
    ]


def test_plugin_that_fails_to_import_is_reported_and_others_work(site: pathlib.Path) -> None:
    seen = run_python(site, '''
        infos = describe(rhapsody.discover_backends())
        try:
            rhapsody.get_backend("brokenplug")
        except rhapsody.BackendUnavailableError as exc:
            error = str(exc)
        out({"infos": infos, "error": error, "tiny": repr(rhapsody.get_backend("tiny"))})
    ''', load="tinyplug, brokenplug")
    broken = seen["infos"]["brokenplug"]
    assert broken == {"available": False, "dist": "rhapsody-badplugs", "version": "0.0.1",
                      "reason": "plugin failed to load: ModuleNotFoundError: No module named "
                                "'engine_that_is_not_here'"}
    assert seen["error"] == ("backend 'brokenplug' cannot be used: plugin failed to load: "
                             "ModuleNotFoundError: No module named 'engine_that_is_not_here'")
    assert seen["infos"]["tiny"]["available"] is True
    assert seen["tiny"] == "<TinyBackend name='tiny' new>"


@pytest.mark.parametrize(("plugin", "message"), [
    ("misspelt", "unknown hook 'rhapsody_register_backend'"),
    ("badargs", "backendd"),
])
def test_invalid_hookimpl_is_left_out_with_one_warning(site: pathlib.Path, plugin: str, message: str) -> None:
    seen = run_python(site, '''
        import warnings
        from rhapsody.plugins import RhapsodyPluginWarning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infos = describe(rhapsody.discover_backends())
            rhapsody.discover_backends()  # loading happens once: no second warning
            tiny = repr(rhapsody.get_backend("tiny"))
        class Good:
            @rhapsody.hookimpl
            def rhapsody_task_states_changed(self, tasks):
                pass
        rhapsody.register_plugin(Good(), name="good")  # not poisoned by the bad plugin
        async def main():
            async with rhapsody.Session() as session:  # Session() works for everybody
                task = rhapsody.ComputeTask(function=pow, args=(2, 3))
                await session.submit_tasks([task])
                return (await task).return_value
        out({"warnings": [(w.category.__name__, str(w.message)) for w in caught], "infos": infos,
             "tiny": tiny, "result": asyncio.run(main())})
    ''', load=f"tinyplug,{plugin}")
    assert len(seen["warnings"]) == 1, seen["warnings"]
    category, text = seen["warnings"][0]
    assert category == "RhapsodyPluginWarning"
    assert text.startswith(f"rhapsody plugin {plugin!r} left out: ")
    assert message in text
    assert "hooks that rhapsody defines: rhapsody_register_backends, rhapsody_task_states_changed, " \
           "rhapsody_validate_task" in text
    assert seen["infos"]["tiny"]["available"] is True
    assert seen["infos"][plugin]["available"] is False
    assert message in seen["infos"][plugin]["reason"]
    assert seen["infos"][plugin]["dist"] == "rhapsody-badplugs"
    assert seen["tiny"] == "<TinyBackend name='tiny' new>"
    assert seen["result"] == 8


def test_duplicate_backend_names_from_two_plugins(site: pathlib.Path) -> None:
    seen = run_python(site, '''
        infos = describe(rhapsody.discover_backends())
        try:
            rhapsody.get_backend("twin")
        except rhapsody.BackendUnavailableError as exc:
            out({"infos": infos, "error": str(exc)})
    ''', load="dupe_a,dupe_b")
    expected = "two plugins register a backend named 'twin': rhapsody-badplugs and rhapsody-badplugs"
    assert seen["infos"]["twin"]["available"] is False
    assert seen["infos"]["twin"]["reason"] == expected
    assert seen["error"] == expected


def test_check_available_failure_is_the_reason(site: pathlib.Path) -> None:
    seen = run_python(site, '''
        infos = describe(rhapsody.discover_backends())
        try:
            rhapsody.get_backend("needsengine")
        except rhapsody.BackendUnavailableError as exc:
            out({"infos": infos, "error": str(exc), "cause": type(exc.__cause__).__name__})
    ''', load="needsengine")
    reason = "ModuleNotFoundError: No module named 'heavy_engine_not_installed'"
    assert seen["infos"]["needsengine"]["reason"] == reason
    assert seen["infos"]["needsengine"]["available"] is False
    assert seen["error"] == f"backend 'needsengine' cannot run here: {reason}"
    assert seen["cause"] == "ModuleNotFoundError"


# -- in this process: built-ins and run-time plugins -------------------------------------------


@pytest.fixture
def registered() -> Iterator[list[Any]]:
    plugins: list[Any] = []
    yield plugins
    for plugin in plugins:
        if pm.is_registered(plugin):
            rhapsody.unregister_plugin(plugin)


def register(registered: list[Any], plugin: Any, name: str) -> None:
    rhapsody.register_plugin(plugin, name=name)
    registered.append(plugin)


def backend_class(backend_name: str, *, unavailable: str | None = None) -> type[BaseBackend]:
    class Made(BaseBackend):
        name = backend_name

        @classmethod
        def check_available(cls) -> None:
            if unavailable:
                raise ImportError(unavailable)

        async def submit_tasks(self, tasks: Any) -> None:
            return None

        async def cancel_task(self, task: Any) -> bool:
            return False

    return Made


def provider(*classes: Any) -> Any:
    class Provider:
        @hookimpl
        def rhapsody_register_backends(self) -> list[Any]:
            return list(classes)

    return Provider()


def test_builtins_are_registered_through_the_hook() -> None:
    infos = rhapsody.discover_backends()  # loads the plugins
    plugins = {impl.plugin_name: impl.plugin for impl in pm.hook.rhapsody_register_backends.get_hookimpls()}
    import rhapsody.builtin.concurrent as concurrent_module
    import rhapsody.builtin.noop as noop_module

    assert plugins["rhapsody.builtin.concurrent"] is concurrent_module
    assert plugins["rhapsody.builtin.noop"] is noop_module
    assert infos["concurrent"].backend_class is concurrent_module.ConcurrentBackend
    assert infos["noop"].available and infos["noop"].distribution == "rhapsody-core"


def test_get_backend_unknown_name() -> None:
    # No made-up "pip install rhapsody-slurmy": the real distributions, and how plugins register.
    with pytest.raises(BackendUnavailableError) as caught:
        rhapsody.get_backend("slurmy")
    message = str(caught.value)
    assert re.match(r"no backend named 'slurmy' is installed \(known: .*concurrent.*\); ", message)
    assert "rhapsody-slurmy" not in message
    assert ("rhapsody-dask (dask), rhapsody-dragon (dragon), rhapsody-radical (radical), "
            "rhapsody-vllm (vllm)") in message
    assert "register through the 'rhapsody' entry-point group" in message


@pytest.mark.parametrize("name", ["dragon", "vllm"])
def test_get_backend_names_the_distribution_of_a_known_backend(name: str) -> None:
    if any(ep.name == name for ep in importlib.metadata.entry_points(group="rhapsody")):
        pytest.skip(f"{name} is installed here")
    with pytest.raises(BackendUnavailableError, match=(
            rf"^no backend named '{name}' is installed \(known: .*\); it comes with the rhapsody-{name} "
            rf"distribution: pip install \./packages/rhapsody-{name} from a clone of rhapsody \(pip "
            rf"install rhapsody-{name} once it is published\)$")):
        rhapsody.get_backend(name)


def test_get_backend_passes_options_and_rejects_unknown_ones() -> None:
    backend = rhapsody.get_backend("concurrent", max_workers=3)
    assert backend.executor._max_workers == 3  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"^backend 'concurrent' \(ConcurrentBackend\) has no option "
                                        r"'workers'; its options are: executor, max_workers, processes, "
                                        r"max_subprocesses, cores, gpus, memory, mpi_launcher, name$"):
        rhapsody.get_backend("concurrent", workers=3)
    with pytest.raises(TypeError, match=r"^backend 'noop' \(NoopBackend\) has no options 'a', 'b'; "
                                        r"its options are: name$"):
        rhapsody.get_backend("noop", a=1, b=2)


def test_unknown_options_of_a_third_party_backend_are_named(registered: list[Any]) -> None:
    class Tunable(backend_class("tunable")):  # type: ignore[misc]
        def __init__(self, *, depth: int = 1, width: int = 1) -> None:
            super().__init__()
            if not isinstance(depth, int):
                raise TypeError(f"tunable: depth must be an int, got {depth!r}")

    register(registered, provider(Tunable), "tunable-provider")
    with pytest.raises(TypeError, match=r"^backend 'tunable' \(Tunable\) has no option 'height'; its "
                                        r"options are: depth, width$"):
        rhapsody.get_backend("tunable", depth=2, height=3)
    # A TypeError the constructor raises itself, for a valid option, keeps its own message.
    with pytest.raises(TypeError, match=r"^tunable: depth must be an int, got 'deep'$"):
        rhapsody.get_backend("tunable", depth="deep")


def test_a_backend_taking_any_keyword_keeps_its_own_type_errors(registered: list[Any]) -> None:
    class Open(backend_class("open-ended")):  # type: ignore[misc]
        def __init__(self, **options: Any) -> None:
            super().__init__()
            raise TypeError(f"open-ended: no use for {sorted(options)}")

    register(registered, provider(Open), "open-provider")
    with pytest.raises(TypeError, match=r"^open-ended: no use for \['anything'\]$"):
        rhapsody.get_backend("open-ended", anything=1)


def test_runtime_plugin_with_an_unavailable_backend(registered: list[Any]) -> None:
    register(registered, provider(backend_class("ghostly", unavailable="No module named 'ghost_engine'")),
             "ghost-provider")
    info = rhapsody.discover_backends()["ghostly"]
    assert (info.available, info.reason) == (False, "ImportError: No module named 'ghost_engine'")
    with pytest.raises(BackendUnavailableError, match=r"^backend 'ghostly' cannot run here: "
                                                      r"ImportError: No module named 'ghost_engine'$"):
        rhapsody.get_backend("ghostly")


def test_runtime_plugins_with_one_backend_name(registered: list[Any]) -> None:
    register(registered, provider(backend_class("samename")), "first-provider")
    register(registered, provider(backend_class("samename")), "second-provider")
    info = rhapsody.discover_backends()["samename"]
    assert info.available is False
    assert "two plugins register a backend named 'samename'" in info.reason
    with pytest.raises(BackendUnavailableError, match=r"two plugins register a backend named 'samename'"):
        rhapsody.get_backend("samename")
    rhapsody.unregister_plugin(registered.pop())
    assert rhapsody.discover_backends()["samename"].available


def test_same_class_from_two_plugins_is_no_conflict(registered: list[Any]) -> None:
    cls = backend_class("shared")
    register(registered, provider(cls), "provider-one")
    register(registered, provider(cls), "provider-two")
    assert rhapsody.discover_backends()["shared"].available


def test_plugin_whose_hook_raises(registered: list[Any]) -> None:
    class Raising:
        @hookimpl
        def rhapsody_register_backends(self) -> list[Any]:
            raise RuntimeError("config file missing")

    register(registered, Raising(), "raising-provider")
    infos = rhapsody.discover_backends()
    assert infos["raising-provider"].reason == ("plugin failed to list its backends: "
                                                "RuntimeError: config file missing")
    assert infos["concurrent"].available


def test_plugin_that_registers_a_non_backend(registered: list[Any]) -> None:
    register(registered, provider(dict), "dict-provider")
    infos = rhapsody.discover_backends()
    assert infos["dict-provider"].available is False
    assert infos["dict-provider"].reason == ("plugin registered <class 'dict'>, which is not a "
                                             "BaseBackend subclass with a string class attribute 'name'")
    assert isinstance(rhapsody.get_backend("noop"), BaseBackend)  # the others keep working


def test_register_plugin_with_a_misspelt_hook(registered: list[Any]) -> None:
    class Misspelt:
        @hookimpl
        def rhapsody_task_state_changed(self, tasks: Any) -> None:
            pass

    plugin = Misspelt()
    with pytest.raises(pluggy.PluginValidationError, match=r"unknown hook 'rhapsody_task_state_changed'"):
        rhapsody.register_plugin(plugin, name="misspelt-at-runtime")
    assert not pm.is_registered(plugin)
    register(registered, provider(backend_class("afterwards")), "afterwards")  # not poisoned
    assert rhapsody.discover_backends()["afterwards"].available


def test_register_plugin_with_wrong_hook_arguments() -> None:
    class WrongArgs:
        @hookimpl
        def rhapsody_validate_task(self, task: Any, site: Any) -> None:
            pass

    with pytest.raises(pluggy.PluginValidationError, match=r"site"):
        rhapsody.register_plugin(WrongArgs(), name="wrong-args")
    assert pm.get_plugin("wrong-args") is None


def test_register_plugin_twice_under_one_name(registered: list[Any]) -> None:
    register(registered, provider(), "taken")
    with pytest.raises(ValueError, match=r"Plugin name already registered: taken"):
        rhapsody.register_plugin(provider(), name="taken")

"""The conformance kit's resources checks: concurrent passes them where it honours each key, and a
backend that ignores resources= is caught."""

from __future__ import annotations

import pathlib
import stat

import pytest

from rhapsody import get_backend
from rhapsody.backend import BaseBackend
from rhapsody.testing import BackendConformance

pytest_plugins = ["pytester"]

# -- concurrent honouring every key: GPUs declared, an MPI launcher named ---------------------

LAUNCHER = ('#!/bin/sh\n[ "$1" = "-n" ] || exit 64\nn=$2; shift 2; i=0\n'
            'while [ "$i" -lt "$n" ]; do RANK=$i "$@" & i=$((i + 1)); done\nwait\n')


class TestConcurrentWithGpusAndLauncher(BackendConformance):
    backend_name = "concurrent"

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        directory: pathlib.Path = request.getfixturevalue("tmp_path_factory").mktemp("launcher")
        launcher = directory / "mpiexec"
        launcher.write_text(LAUNCHER)
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
        return get_backend("concurrent", cores=4, gpus=["k0", "k1"], memory=4096,
                           mpi_launcher=str(launcher))


# -- a backend that ignores resources= fails the kit ------------------------------------------


def test_a_backend_that_ignores_resources_is_caught(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ignoring_kit='''
        from rhapsody.builtin.concurrent import ConcurrentBackend
        from rhapsody.testing import BackendConformance

        class Ignoring(ConcurrentBackend):
            """Drops every task's resources request before looking at it."""
            async def check_tasks(self, tasks):
                for task in tasks:
                    task.pop("resources", None)
                await super().check_tasks(tasks)

        class TestIgnoring(BackendConformance):
            backend_name = "concurrent"
            def make_backend(self, request):
                return Ignoring(max_subprocesses=4)
    ''')
    result = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider", "-k", "resources")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*resources={'ranks': 2} ran the program as 'rank\\n': it must run once per rank, or be refused*",
        "*resources={'ranks': 1000000} is beyond any machine, yet the task ran: the request was ignored*",
    ])

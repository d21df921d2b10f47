"""Portable resources on RADICAL-Pilot: ``ComputeTask(resources=...)`` as TaskDescription fields.

One real pilot for the module (conftest's ``rp_pilot``): RP's ``local.localhost`` is one virtual
node of 8 cores, 1 GPU and 4096 MB, of which the backend's Raptor master and worker take 2 cores.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rhapsody import ComputeTask, Session, TaskExecutionError
from rhapsody_radical import RadicalBackend
from rhapsody_radical.resources import description_fields

rp = pytest.importorskip("radical.pilot")

STEP = 240.0  # bound on any one await here: RP on a loaded 2-core machine is slow, never hung
DOC = Path(__file__).parents[2] / "docs" / "backends" / "radical.md"


class OnPilot:
    """The module's session on the pilot, and the one event loop every test drives it with."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, STEP))

    def finish(self, *tasks: ComputeTask) -> None:
        """Submit the tasks and wait until every one has ended."""
        self.run(self.session.submit_tasks(list(tasks)))
        self.run(self.session.wait_tasks(list(tasks)))


@pytest.fixture(scope="module")
def on_pilot(rp_pilot: Any) -> Iterator[OnPilot]:
    here = OnPilot(Session(backends=[RadicalBackend(pilot=rp_pilot)]))
    try:
        here.run(here.session.start())
        yield here
        here.run(here.session.close())
    finally:
        here.loop.close()


def rp_view(**options: Any) -> ComputeTask:
    """An executable that prints what RP gave it: ranks, cores and GPUs per rank, its GPU ids."""
    return ComputeTask(
        executable="/bin/sh",
        arguments=["-c", 'echo "$RP_RANKS $RP_CORES_PER_RANK $RP_GPUS_PER_RANK ${CUDA_VISIBLE_DEVICES-none}"'],
        **options)


# -- the mapping, into the real rp.TaskDescription ---------------------------------------------

def test_request_becomes_task_description_fields() -> None:
    task = ComputeTask(executable="/bin/true", resources={
        "ranks": 2, "cores_per_rank": 3, "gpus_per_rank": 0.5, "memory_per_rank": 1024})
    fields = description_fields(task, {})
    description = rp.TaskDescription({"executable": "/bin/true", **fields})
    description.verify()
    assert (description.ranks, description.cores_per_rank, description.gpus_per_rank,
            description.mem_per_rank, description.gpu_type) == (2, 3, 0.5, 1024, "CUDA")
    # Keys left out read as their defaults; no memory asked, no mem_per_rank; no GPU, no gpu_type.
    assert description_fields(ComputeTask(executable="/bin/true", resources={"cores_per_rank": 2}), {}) \
        == {"ranks": 1, "cores_per_rank": 2, "gpus_per_rank": 0}
    assert description_fields(ComputeTask(executable="/bin/true"), {}) == {}
    assert "gpu_type" not in description_fields(task, {"gpu_type": "ROCm"})
    # A field given in task_backend_specific_kwargs wins, under its name or RP's deprecated one.
    assert "cores_per_rank" not in description_fields(task, {"cores_per_rank": 4})
    assert "cores_per_rank" not in description_fields(task, {"cpu_threads": 4})
    assert description_fields(task, {"mem_per_process": 1})["ranks"] == 2


# -- on the pilot --------------------------------------------------------------------------------

def test_executable_gets_what_it_asked_for(on_pilot: OnPilot) -> None:
    asked = rp_view(resources={"cores_per_rank": 2, "gpus_per_rank": 1, "memory_per_rank": 1024})
    plain = rp_view()
    # task_backend_specific_kwargs names the same RP field: it wins over resources=.
    hatch = rp_view(resources={"cores_per_rank": 2}, task_backend_specific_kwargs={"cores_per_rank": 3})
    on_pilot.finish(asked, plain, hatch)
    for task in (asked, plain, hatch):
        assert task.state == "DONE", (task.exception, task.stderr)
    # RP placed it on the pilot's one (virtual) GPU, device 0, and said so in CUDA_VISIBLE_DEVICES.
    assert asked.stdout.split() == ["1", "2", "1", "0"]
    assert plain.stdout.split() == ["1", "1", "0", "none"]
    assert hatch.stdout.split()[:2] == ["1", "3"]


@pytest.mark.parametrize(("resources", "match"), [
    ({"cores_per_rank": 9}, "cores_per_rank=9 exceeds the 8 cores of a node"),
    ({"gpus_per_rank": 2}, "gpus_per_rank=2 exceeds the 1 GPUs of a node"),
    ({"memory_per_rank": 8192}, "mem_per_rank=8192 exceeds the 4096 MB of a node"),
    ({"ranks": 4, "cores_per_rank": 2}, "at most 3 such ranks fit"),
])
def test_larger_than_the_pilot_is_refused_at_submit(
    on_pilot: OnPilot, resources: dict[str, int], match: str
) -> None:
    task = ComputeTask(executable="/bin/true", resources=resources)
    with pytest.raises(ValueError, match="can never run in pilot") as caught:
        on_pilot.run(on_pilot.session.submit_tasks([task]))
    assert match in str(caught.value)
    assert task.state == "NEW" and on_pilot.session.in_flight == 0


def add(a: int, b: int) -> int:
    return a + b


def test_function_tasks_take_one_core_and_refuse_more(on_pilot: OnPilot) -> None:
    one = ComputeTask(function=add, args=(2, 3), resources={"cores_per_rank": 1, "gpus_per_rank": 0})
    on_pilot.finish(one)
    assert (one.state, one.return_value) == ("DONE", 5)
    for key, value in (("cores_per_rank", 2), ("gpus_per_rank", 1), ("memory_per_rank", 64), ("ranks", 2)):
        task = ComputeTask(function=add, args=(1, 1), resources={key: value})
        with pytest.raises(ValueError, match=rf"resources\['{key}'\]={value} cannot be given to a function") as caught:
            on_pilot.run(on_pilot.session.submit_tasks([task]))
        assert "Run the work as an executable task" in str(caught.value)
        assert task.state == "NEW"
    assert on_pilot.session.in_flight == 0


def test_documented_example_runs_as_written(on_pilot: OnPilot) -> None:
    section = DOC.read_text().split("## Portable resources", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    names: dict[str, Any] = {}
    exec(code, names)  # noqa: S102 - the page's own example, as a user would paste it
    task = names["task"]
    on_pilot.finish(task)
    assert task.state == "DONE", (task.exception, task.stderr)
    assert task.stdout.split() == ["1", "2"]



def test_ranks_run_through_the_pilots_mpi_launcher_or_fail_saying_why(
    on_pilot: OnPilot
) -> None:
    task = rp_view(resources={"ranks": 2})
    on_pilot.finish(task)
    if shutil.which("mpiexec") or shutil.which("mpirun"):
        assert task.state == "DONE", (task.exception, task.stderr)
        assert [line.split()[:2] for line in task.stdout.splitlines()] == [["2", "1"], ["2", "1"]]
    else:
        # No MPI launcher on this machine: RP fails the task with its reason; it never waits.
        assert task.state == "FAILED"
        assert isinstance(task.exception, TaskExecutionError)
        assert "could not run: RADICAL-Pilot" in str(task.exception)

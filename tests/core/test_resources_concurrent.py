"""The concurrent backend honours resources=: cores, GPUs and memory held on the node.

Real subprocesses (``/bin/sh``) on a node with declared cores and GPU ids (this machine may have
no GPU: the ids are declared, and each task prints the ``CUDA_VISIBLE_DEVICES`` it was given).
Each task records when it started and ended (``date`` inside the program), so the tests check
from the programs themselves who ran alongside whom. Nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import stat
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from rhapsody import ComputeTask, Session, TaskState, get_backend
from rhapsody.builtin.concurrent import ConcurrentBackend
from rhapsody.builtin.node import detect_gpus

NO_HANG = 60.0
# Prints "<start> <devices>" and "<end>": the interval the program ran in, and what it saw.
RECORD = ('s=$(date +%s.%N); sleep {sleep}; '
          'echo "$s ${{CUDA_VISIBLE_DEVICES-unset}}"; date +%s.%N')


def recorder(sleep: float = 0.3, **kwargs: Any) -> ComputeTask:
    return ComputeTask(executable="/bin/sh", arguments=["-c", RECORD.format(sleep=sleep)],
                       timeout=NO_HANG, **kwargs)


async def run(backend: ConcurrentBackend, tasks: Sequence[ComputeTask]) -> None:
    async with Session(backends=[backend]) as session:
        await session.submit_tasks(list(tasks))
        await session.wait_tasks(tasks, timeout=NO_HANG)
    for task in tasks:
        assert task.state == TaskState.DONE, (task.uid, task.exception, task.stderr)


def interval(task: ComputeTask) -> tuple[float, float, str]:
    first, second = task.stdout.split("\n")[:2]
    start, devices = first.split(" ", 1)
    return float(start), float(second), devices


def overlap(a: ComputeTask, b: ComputeTask) -> bool:
    a_start, a_end, _ = interval(a)
    b_start, b_end, _ = interval(b)
    return a_start < b_end and b_start < a_end


# -- GPUs --------------------------------------------------------------------------------------


def test_each_task_sees_exactly_its_gpus_and_no_gpu_is_shared() -> None:
    backend = get_backend("concurrent", cores=8, gpus=["g0", "g1", "g2"])
    assert backend.gpus == ("g0", "g1", "g2")
    ones = [recorder(resources={"gpus_per_rank": 1}) for _ in range(6)]
    pair = recorder(resources={"gpus_per_rank": 2})
    none = recorder()
    asyncio.run(run(backend, [*ones, pair, none]))
    for task in ones:
        assert interval(task)[2] in ("g0", "g1", "g2")
    assert sorted(interval(pair)[2].split(",")) in (["g0", "g1"], ["g0", "g2"], ["g1", "g2"])
    assert interval(none)[2] == ""  # asked for no GPU: sees none, not all of them
    gpu_tasks = [*ones, pair]
    for index, a in enumerate(gpu_tasks):
        for b in gpu_tasks[index + 1:]:
            if set(interval(a)[2].split(",")) & set(interval(b)[2].split(",")):
                assert not overlap(a, b), (interval(a), interval(b))


def test_fractions_share_a_gpu_with_fractions_only() -> None:
    backend = get_backend("concurrent", cores=8, gpus=1)
    halves = [recorder(resources={"gpus_per_rank": 0.5}) for _ in range(4)]
    whole = recorder(resources={"gpus_per_rank": 1})
    asyncio.run(run(backend, [*halves, whole]))
    assert {interval(task)[2] for task in [*halves, whole]} == {"0"}
    for half in halves:
        assert not overlap(half, whole)
    for index, half in enumerate(halves):  # never three halves at once on one GPU
        alongside = [other for other in halves[index + 1:] if overlap(half, other)]
        for a in alongside:
            for b in alongside:
                assert a is b or not overlap(a, b)


def test_the_tasks_own_env_wins_over_the_assignment() -> None:
    backend = get_backend("concurrent", gpus=["a", "b"])
    own = recorder(resources={"gpus_per_rank": 1},
                   task_backend_specific_kwargs={"env": {"CUDA_VISIBLE_DEVICES": "mine",
                                                         "PATH": os.environ["PATH"]}})
    asyncio.run(run(backend, [own]))
    assert interval(own)[2] == "mine"


def test_rocm_devices_are_handed_on_through_their_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "0,1")
    backend = get_backend("concurrent")
    assert backend.gpus == ("4", "6")
    task = ComputeTask(executable="/bin/sh", resources={"gpus_per_rank": 1}, arguments=[
        "-c", 'echo "${ROCR_VISIBLE_DEVICES-unset} ${HIP_VISIBLE_DEVICES-unset} '
              '${CUDA_VISIBLE_DEVICES-unset}"'])
    asyncio.run(run(backend, [task]))
    # HIP indexes into what ROCr lets through: a second list would filter twice.
    assert task.stdout.split() in (["4", "unset", "unset"], ["6", "unset", "unset"])


def test_gpus_zero_leaves_programs_the_devices_this_process_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    accounted = recorder()  # found GPU 7: a task that asked for none sees none
    asyncio.run(run(get_backend("concurrent"), [accounted]))
    assert interval(accounted)[2] == ""
    untouched = recorder()
    asyncio.run(run(get_backend("concurrent", gpus=0), [untouched]))
    assert interval(untouched)[2] == "7"


@pytest.mark.parametrize(("environment", "found"), [
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, (["2", "3"], "CUDA_VISIBLE_DEVICES")),
    ({"CUDA_VISIBLE_DEVICES": "GPU-1a2b, GPU-3c4d"}, (["GPU-1a2b", "GPU-3c4d"], "CUDA_VISIBLE_DEVICES")),
    ({"CUDA_VISIBLE_DEVICES": ""}, ([], "CUDA_VISIBLE_DEVICES")),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, (["0"], "CUDA_VISIBLE_DEVICES")),
    ({"HIP_VISIBLE_DEVICES": "1"}, (["1"], "HIP_VISIBLE_DEVICES")),
])
def test_gpus_found_in_the_environment(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str],
                                       found: tuple[list[str], str]) -> None:
    for variable in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert detect_gpus() == found


# -- cores and memory --------------------------------------------------------------------------


def test_a_whole_node_task_runs_alone_and_small_ones_pack() -> None:
    backend = get_backend("concurrent", cores=3, gpus=0)
    small = [recorder(sleep=0.5) for _ in range(6)]
    node = recorder(resources={"ranks": 1, "cores_per_rank": 3})
    tasks = [*small[:3], node, *small[3:]]
    asyncio.run(run(backend, tasks))
    for task in small:
        assert not overlap(task, node)
    assert any(overlap(a, b) for a in small for b in small if a is not b)  # small ones pack
    # At most three one-core tasks at once on three cores.
    for task in small:
        assert sum(overlap(task, other) for other in small if other is not task) <= 2


def test_waiting_tasks_keep_their_turn() -> None:
    # first holds one core of two; wide waits for both, and sets aside the free one: the small
    # task behind it cannot take that core, so it starts only after wide has ended.
    backend = get_backend("concurrent", cores=2, gpus=0)
    first = recorder(sleep=0.5)
    wide = recorder(sleep=0.1, resources={"cores_per_rank": 2})
    behind = recorder(sleep=0.1)
    asyncio.run(run(backend, [first, wide, behind]))
    assert interval(wide)[0] >= interval(first)[1]
    assert interval(behind)[0] >= interval(wide)[1]


def test_small_tasks_backfill_what_a_waiting_task_cannot_use(tmp_path: pathlib.Path) -> None:
    # holder keeps the only GPU until the small task (behind a task that waits for that GPU)
    # has run: were there no backfill, holder would wait until its timeout and fail.
    flag = tmp_path / "small-ran"
    backend = get_backend("concurrent", cores=3, gpus=1)
    holder = ComputeTask(executable="/bin/sh", resources={"gpus_per_rank": 1}, timeout=NO_HANG,
                         arguments=["-c", f"while [ ! -e {flag} ]; do sleep 0.05; done"])
    waiting = recorder(sleep=0, resources={"gpus_per_rank": 1})
    small = ComputeTask(executable="/bin/touch", arguments=[str(flag)])
    asyncio.run(run(backend, [holder, waiting, small]))


def test_memory_is_counted_against_the_node() -> None:
    backend = get_backend("concurrent", cores=4, gpus=0, memory=100)
    big = [recorder(sleep=0.2, resources={"memory_per_rank": 60}) for _ in range(3)]
    asyncio.run(run(backend, big))
    for index, a in enumerate(big):
        for b in big[index + 1:]:
            assert not overlap(a, b)


def test_max_subprocesses_alone_still_runs_that_many_one_core_programs() -> None:
    backend = get_backend("concurrent", max_subprocesses=64)
    assert backend.cores == max(os.cpu_count() or 1, 64)
    backend = get_backend("concurrent", cores=4, max_subprocesses=2)
    assert backend.cores == 4


def test_a_cancelled_waiting_task_gives_back_its_turn() -> None:
    async def main() -> None:
        backend = get_backend("concurrent", cores=2, gpus=0)
        async with Session(backends=[backend]) as session:
            long = ComputeTask(executable="/bin/sleep", arguments=["30"])
            wide = recorder(resources={"cores_per_rank": 2})
            small = recorder(sleep=0)
            await session.submit_tasks([long, wide, small])
            await asyncio.sleep(0.2)
            assert small.state != TaskState.DONE  # wide set the free core aside
            assert await session.cancel_task(wide)
            await session.wait_tasks([small], timeout=NO_HANG)
            assert small.state == TaskState.DONE
            assert wide.state == TaskState.CANCELED
            assert await session.cancel_task(long)
            await session.wait_tasks([long], timeout=NO_HANG)
            # long's cores are back: a whole-node task starts.
            again = recorder(sleep=0, resources={"cores_per_rank": 2})
            await session.submit_tasks([again])
            await session.wait_tasks([again], timeout=NO_HANG)
            assert again.state == TaskState.DONE

    asyncio.run(main())


# -- MPI ranks ---------------------------------------------------------------------------------


def fake_launcher(tmp_path: pathlib.Path) -> str:
    """A stand-in for mpiexec: ``-n N prog args`` runs N copies with RANK set, and waits."""
    path = tmp_path / "launcher"
    path.write_text('#!/bin/sh\n[ "$1" = "-n" ] || exit 64\nn=$2; shift 2; i=0\n'
                    'while [ "$i" -lt "$n" ]; do RANK=$i "$@" & i=$((i + 1)); done\nwait\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_ranks_run_through_the_named_launcher(tmp_path: pathlib.Path) -> None:
    backend = get_backend("concurrent", cores=4, gpus=["x", "y"], mpi_launcher=fake_launcher(tmp_path))
    job = ComputeTask(executable="/bin/sh", resources={"ranks": 2, "gpus_per_rank": 1},
                      arguments=["-c", 'echo "rank $RANK of $CUDA_VISIBLE_DEVICES"'])
    shell = ComputeTask(executable='echo "shell rank $RANK"', resources={"ranks": 3},
                        task_backend_specific_kwargs={"shell": True})
    asyncio.run(run(backend, [job, shell]))
    assert sorted(job.stdout.splitlines()) == ["rank 0 of x,y", "rank 1 of x,y"]
    assert sorted(shell.stdout.splitlines()) == ["shell rank 0", "shell rank 1", "shell rank 2"]


# -- refused at submit -------------------------------------------------------------------------


def refusal(backend: ConcurrentBackend, task: ComputeTask) -> str:
    async def main() -> str:
        async with Session(backends=[backend]) as session:
            with pytest.raises((ValueError, TypeError)) as info:
                await session.submit_tasks([task])
            assert task.state == TaskState.NEW
            return str(info.value)

    return asyncio.run(main())


@pytest.mark.parametrize(("options", "request_", "words"), [
    ({"cores": 2, "gpus": 0}, {"ranks": 1, "cores_per_rank": 3},
     ["task big", "asks for 3 cores", "node offers 2", "cores=N"]),
    ({"cores": 2, "gpus": 0}, {"gpus_per_rank": 1}, ["task big", "asks for 1 GPUs", "offers none"]),
    ({"cores": 8, "gpus": ["a", "b"]}, {"ranks": 1, "gpus_per_rank": 3},
     ["asks for 3 GPUs", "offers 2 (a, b)", "gpus=N"]),
    ({"cores": 2, "gpus": 0}, {"gpus_per_rank": 0.5}, ["asks for 1 x 0.5 GPUs", "offers none"]),
    ({"cores": 2, "gpus": 0, "memory": 1000}, {"memory_per_rank": 1001},
     ["asks for 1001 MiB", "offers 1000 MiB"]),
    ({"cores": 8, "gpus": 0}, {"ranks": 2}, ["ranks=2 needs an MPI launcher",
                                             "mpi_launcher='mpiexec'"]),
    ({"cores": 8, "gpus": 0, "mpi_launcher": "no-such-mpiexec -x"}, {"ranks": 2},
     ["mpi_launcher 'no-such-mpiexec' is not found on PATH"]),
])
def test_what_the_node_can_never_offer_is_refused_at_submit(
        options: dict[str, Any], request_: dict[str, Any], words: list[str]) -> None:
    message = refusal(get_backend("concurrent", **options),
                      ComputeTask(executable="/bin/true", uid="big", resources=request_))
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("request_", [{"gpus_per_rank": 1}, {"ranks": 2}, {"cores_per_rank": 2},
                                      {"memory_per_rank": 10}])
def test_function_tasks_take_one_worker_and_refuse_more(request_: dict[str, Any]) -> None:
    message = refusal(get_backend("concurrent", gpus=1),
                      ComputeTask(function=abs, args=(-1,), uid="fn", resources=request_))
    assert "task fn: concurrent runs a function task as one call in one pool worker" in message
    assert f"{next(iter(request_))}=" in message


def test_a_function_task_asking_for_one_core_runs() -> None:
    task = ComputeTask(function=abs, args=(-2,), resources={"ranks": 1, "cores_per_rank": 1})

    async def main() -> None:
        async with Session(backends=[get_backend("concurrent")]) as session:
            await session.submit_tasks([task])
            await session.wait_tasks([task], timeout=NO_HANG)

    asyncio.run(main())
    assert task.return_value == 2


@pytest.mark.parametrize(("options", "error", "pattern"), [
    ({"cores": 0}, ValueError, r"cores must be an integer >= 1"),
    ({"memory": -5}, ValueError, r"memory must be an integer >= 1"),
    ({"gpus": -1}, ValueError, r"gpus must be >= 0"),
    ({"gpus": 1.5}, TypeError, r"gpus must be a count or a list of device ids"),
    ({"gpus": ["0", "0"]}, ValueError, r"gpus names a device twice"),
    ({"gpus": [None]}, TypeError, r"gpus holds device ids"),
    ({"mpi_launcher": ""}, ValueError, r"mpi_launcher must name a program"),
    ({"mpi_launcher": 5}, TypeError, r"mpi_launcher must be a command"),
])
def test_bad_node_declarations(options: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        get_backend("concurrent", **options)


def real_mpiexec() -> str:
    """An MPI launcher on PATH or in this Python's environment (``pip install mpich`` has one)."""
    found = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.join(sys.prefix, "bin"))
    if found is None:
        pytest.skip("no mpiexec on PATH or in this environment (pip install mpich provides one)")
    return found


def test_ranks_run_under_a_real_mpiexec(tmp_path: pathlib.Path) -> None:
    mpiexec = real_mpiexec()
    backend = get_backend("concurrent", cores=4, gpus=["m0", "m1", "m2"], mpi_launcher=mpiexec)
    job = ComputeTask(executable="/bin/sh", resources={"ranks": 2, "gpus_per_rank": 1},
                      arguments=["-c", 'echo "rank $PMI_RANK of $PMI_SIZE sees $CUDA_VISIBLE_DEVICES"'])
    asyncio.run(run(backend, [job]))
    lines = sorted(job.stdout.splitlines())
    assert [line.split(" sees ")[0] for line in lines] == ["rank 0 of 2", "rank 1 of 2"], job.stdout
    devices = {line.split(" sees ")[1] for line in lines}
    assert len(devices) == 1 and len(devices.pop().split(",")) == 2  # the job's two GPUs


def test_cancelling_a_real_mpi_job_kills_every_rank(tmp_path: pathlib.Path) -> None:
    mpiexec = real_mpiexec()

    async def main() -> list[int]:
        backend = get_backend("concurrent", cores=4, gpus=0, mpi_launcher=mpiexec)
        async with Session(backends=[backend]) as session:
            job = ComputeTask(executable="/bin/sh", resources={"ranks": 2}, arguments=[
                "-c", f'sleep 300 & echo $! > {tmp_path}/rank-$PMI_RANK; wait'])
            await session.submit_tasks([job])
            pids = []
            for rank in (0, 1):
                path = tmp_path / f"rank-{rank}"
                for _ in range(600):
                    if path.exists() and path.read_text().strip():
                        break
                    await asyncio.sleep(0.05)
                pids.append(int(path.read_text()))
            assert await session.cancel_task(job)
            assert job.state == TaskState.CANCELED
            # Its cores are back: a whole-node task runs.
            after = recorder(sleep=0, resources={"cores_per_rank": 4})
            await session.submit_tasks([after])
            await session.wait_tasks([after], timeout=NO_HANG)
            assert after.state == TaskState.DONE
            return pids

    for pid in asyncio.run(main()):
        assert not pathlib.Path(f"/proc/{pid}").exists() or " Z " in pathlib.Path(
            f"/proc/{pid}/stat").read_text(), f"rank process {pid} outlived its cancelled job"

"""The machine the ``concurrent`` backend runs executables on, and which task holds what of it.

The node has cores, GPUs (by device id), memory (MiB) and a number of program slots
(``max_subprocesses``). An executable holds what its resource request asks for
(:class:`rhapsody.Resources`; one core when it asked nothing) from the moment it starts until its
process group is gone, so two running programs never hold the same core count twice or the same
whole GPU. A GPU is counted in thousandths: a task asking for a fraction of one shares a device
only with other fractional tasks; a whole-GPU task only takes a device nobody holds any part of.

Waiting tasks are served in the order they arrived, with backfill that never delays an earlier
task: each waiting task, in order, sets aside whatever of what it needs is free now, and a later
task starts only with what is left over after that. A whole-node task therefore starts as soon
as the tasks running before it have ended, while small tasks behind a task that waits for GPUs
still use the cores it does not need.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..resources import Resources, resources_of
from ..task import Task

UNITS = 1000  # one GPU, in the thousandths fractional requests are counted in
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
_SMI_TIMEOUT = 10.0  # nvidia-smi normally answers in well under a second


@dataclass(frozen=True)
class Demand:
    """What one executable holds while it runs."""

    cores: int = 1
    memory: int = 0
    whole_gpus: int = 0  # devices held entirely
    pieces: tuple[int, ...] = ()  # thousandths of a device, one entry per rank (fractional GPUs)

    @classmethod
    def of(cls, resources: Resources | None) -> Demand:
        if resources is None:
            return _ONE_CORE
        gpus = resources.gpus_per_rank
        if resources.fractional_gpus:
            whole, pieces = 0, (max(1, round(gpus * UNITS)),) * resources.ranks
        else:
            whole, pieces = int(gpus) * resources.ranks, ()
        return cls(cores=resources.cores, memory=resources.memory or 0, whole_gpus=whole,
                   pieces=pieces)


_ONE_CORE = Demand()


@dataclass
class Grant:
    """What a running executable holds: cores, memory, and thousandths per device index."""

    cores: int
    memory: int
    devices: dict[int, int] = field(default_factory=dict)


@dataclass
class _Free:
    cores: int
    memory: int
    slots: int
    units: list[int]

    def copy(self) -> _Free:
        return _Free(self.cores, self.memory, self.slots, list(self.units))

    def fit(self, demand: Demand) -> Grant | None:
        """Where ``demand`` would go in what is free, or None when it does not fit now."""
        if demand.cores > self.cores or demand.memory > self.memory or self.slots < 1:
            return None
        devices: dict[int, int] = {}
        if demand.whole_gpus:
            idle = [index for index, free in enumerate(self.units) if free == UNITS]
            if len(idle) < demand.whole_gpus:
                return None
            devices = {index: UNITS for index in idle[:demand.whole_gpus]}
        if demand.pieces:
            left = list(self.units)
            for piece in demand.pieces:
                index = _best_fit(left, piece)
                if index is None:
                    return None
                left[index] -= piece
                devices[index] = devices.get(index, 0) + piece
        return Grant(demand.cores, demand.memory, devices)

    def take(self, grant: Grant) -> None:
        self.cores -= grant.cores
        self.memory -= grant.memory
        self.slots -= 1
        for index, units in grant.devices.items():
            self.units[index] -= units

    def set_aside(self, demand: Demand) -> None:
        """Keep back, for a task that waits, whatever of its demand is free now."""
        self.cores -= min(self.cores, demand.cores)
        self.memory -= min(self.memory, demand.memory)
        self.slots -= min(self.slots, 1)
        wanted = demand.whole_gpus
        for index, free in enumerate(self.units):
            if wanted and free == UNITS:
                self.units[index] = 0
                wanted -= 1
        for piece in demand.pieces:
            found = _best_fit(self.units, piece)
            if found is not None:
                self.units[found] -= piece


def _best_fit(units: list[int], piece: int) -> int | None:
    # The device with the least room that still fits: whole devices stay whole for longest.
    best: int | None = None
    for index, free in enumerate(units):
        if free >= piece and (best is None or free < units[best]):
            best = index
    return best


class Node:
    """The cores, GPUs, memory and program slots one ``concurrent`` backend hands out.

    Args:
        cores: cores (>= 1).
        gpus: the device ids, in the form ``gpu_variable`` takes them.
        gpu_variable: the environment variable that gives a program its devices.
        memory: MiB (>= 1).
        slots: how many programs run at once (``max_subprocesses``).
    """

    def __init__(self, *, cores: int, gpus: Sequence[str], gpu_variable: str, memory: int,
                 slots: int) -> None:
        self.cores = cores
        self.gpus = tuple(gpus)
        self.gpu_variable = gpu_variable
        self.memory = memory
        self.slots = slots
        self._free = _Free(cores, memory, slots, [UNITS] * len(self.gpus))
        self._waiting: dict[asyncio.Future[Grant], Demand] = {}

    def refusal(self, demand: Demand, resources: Resources) -> str | None:
        """Why the whole, idle node could never run ``demand``; None when it could."""
        if demand.cores > self.cores:
            return (f"asks for {demand.cores} cores (ranks {resources.ranks} x cores_per_rank "
                    f"{resources.cores_per_rank}) but the node offers {self.cores}; declare the "
                    "node's cores with get_backend('concurrent', cores=N)")
        if demand.memory > self.memory:
            return (f"asks for {demand.memory} MiB of memory (ranks {resources.ranks} x "
                    f"memory_per_rank {resources.memory_per_rank}) but the node offers "
                    f"{self.memory} MiB")
        if (demand.whole_gpus or demand.pieces) and _Free(
                self.cores, self.memory, 1, [UNITS] * len(self.gpus)).fit(demand) is None:
            asked = demand.whole_gpus or f"{len(demand.pieces)} x {resources.gpus_per_rank}"
            offered = f"{len(self.gpus)} ({', '.join(self.gpus)})" if self.gpus else "none"
            return (f"asks for {asked} GPUs (ranks {resources.ranks} x gpus_per_rank "
                    f"{resources.gpus_per_rank}) but the node offers {offered}; declare its "
                    "GPUs with get_backend('concurrent', gpus=N or [device ids])")
        return None

    async def acquire(self, demand: Demand) -> Grant:
        """Wait until ``demand`` fits (in turn, see the module docstring) and hold it.

        Cancelling the wait gives back whatever had been granted.
        """
        if not self._waiting:  # nobody's turn comes first: no future, no dispatch
            grant = self._free.fit(demand)
            if grant is not None:
                self._free.take(grant)
                return grant
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiting[future] = demand
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if self._waiting.pop(future, None) is None and future.done() and not future.cancelled():
                self.release(future.result())  # granted, then cancelled before it resumed
            else:
                self._dispatch()  # what it had set aside may let others start
            raise

    def release(self, grant: Grant) -> None:
        """Give back what a task held, and start the waiting tasks that now fit."""
        free = self._free
        free.cores += grant.cores
        free.memory += grant.memory
        free.slots += 1
        for index, units in grant.devices.items():
            free.units[index] += units
        self._dispatch()

    def visible(self, grant: Grant) -> str:
        """The ``gpu_variable`` value for a grant: its device ids, comma-separated."""
        return ",".join(self.gpus[index] for index in sorted(grant.devices))

    def _dispatch(self) -> None:
        if not self._waiting:
            return
        left = self._free.copy()  # what later tasks may use once earlier ones set theirs aside
        started = []
        for future, demand in self._waiting.items():
            if left.cores < 1 or left.slots < 1:
                break  # every task needs a core and a slot: nothing further can start
            if future.done():  # cancelled; its waiter removes it
                continue
            grant = left.fit(demand)
            if grant is None:
                left.set_aside(demand)
                continue
            left.take(grant)
            self._free.take(grant)
            future.set_result(grant)
            started.append(future)
        for future in started:
            del self._waiting[future]


# -- what this machine has --------------------------------------------------------------------


def machine_memory() -> int:
    """MiB of memory this process may use: physical memory, or a smaller cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as limit:
            total = min(total, int(limit.read().strip()))  # "max" (no limit) fails int()
    return max(1, total // 2**20)


def visible_ids(value: str) -> list[str]:
    """The device ids a ``*_VISIBLE_DEVICES`` value selects (CUDA stops at the first ``-1``)."""
    ids = []
    for item in value.split(","):
        item = item.strip()
        if not item or item in ("-1", "NoDevFiles"):
            break
        ids.append(item)
    return ids


def detect_gpus() -> tuple[list[str], str]:
    """The GPUs this process may use, and the variable that selects among them.

    First a ``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES`` or ``HIP_VISIBLE_DEVICES`` this
    process was started with (its ids, handed on through that same variable); else the NVIDIA
    driver's device list (``/proc/driver/nvidia/gpus``, or ``nvidia-smi -L``); else the AMD
    driver's (``/sys/class/kfd``, selected through ``ROCR_VISIBLE_DEVICES``). None found: no GPUs.
    """
    for variable in GPU_VARIABLES:
        value = os.environ.get(variable)
        if value is not None:
            return visible_ids(value), variable
    count = _nvidia_devices()
    if count:
        return [str(index) for index in range(count)], "CUDA_VISIBLE_DEVICES"
    count = _amd_devices()
    if count:
        return [str(index) for index in range(count)], "ROCR_VISIBLE_DEVICES"
    return [], "CUDA_VISIBLE_DEVICES"


def _nvidia_devices() -> int:
    with contextlib.suppress(OSError):
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
        if count:
            return count
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True,
                                 timeout=_SMI_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def _amd_devices() -> int:
    # Each GPU is a topology node whose properties name a non-zero gfx target; CPUs have 0.
    base = "/sys/class/kfd/kfd/topology/nodes"
    count = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            with contextlib.suppress(OSError):
                with open(os.path.join(base, name, "properties")) as properties:
                    for line in properties:
                        key, _, value = line.partition(" ")
                        if key == "gfx_target_version" and value.strip() not in ("", "0"):
                            count += 1
                            break
    return count


def declared_gpus(gpus: Any) -> tuple[list[str], str]:
    """The device ids of ``gpus=`` (a count, a list of ids or an ``"0,1"`` string)."""
    if isinstance(gpus, bool) or not isinstance(gpus, (int, str, Sequence)):
        raise TypeError(f"concurrent: gpus must be a count or a list of device ids, got {gpus!r}")
    if isinstance(gpus, int):
        if gpus < 0:
            raise ValueError(f"concurrent: gpus must be >= 0, got {gpus!r}")
        ids = [str(index) for index in range(gpus)]
    elif isinstance(gpus, str):
        ids = visible_ids(gpus)
    else:
        ids = []
        for item in gpus:
            if (isinstance(item, bool) or not isinstance(item, (int, str))
                    or not str(item).strip() or "," in str(item)):
                raise TypeError(f"concurrent: gpus holds device ids (str or int), got {item!r}")
            ids.append(str(item).strip())
    if len(set(ids)) != len(ids):
        raise ValueError(f"concurrent: gpus names a device twice: {ids}")
    return ids, "CUDA_VISIBLE_DEVICES"


def launcher_command(value: Any) -> list[str]:
    """The ``mpi_launcher=`` option as a command prefix (``[]`` when not given).

    Raises:
        TypeError, ValueError: not a command (a str, or a list of str, naming a program).
    """
    if value is None:
        return []
    if isinstance(value, str):
        parts = shlex.split(value)
    elif isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
        parts = list(value)
    else:
        raise TypeError(f"concurrent: mpi_launcher must be a command (str or list of str), got {value!r}")
    if not parts or not parts[0]:
        raise ValueError("concurrent: mpi_launcher must name a program, e.g. 'mpiexec'")
    return parts


def check_function_request(task: Task) -> None:
    """Refuse a function task whose ``resources=`` asks for more than one pool worker gives.

    Raises:
        ValueError: the request names what is beyond one rank and one core, no GPU, no memory.
    """
    resources = resources_of(task)
    if resources is None:
        return
    beyond = [f"{key}={value}" for key, value, most in (
        ("ranks", resources.ranks, 1), ("cores_per_rank", resources.cores_per_rank, 1),
        ("gpus_per_rank", resources.gpus_per_rank, 0),
        ("memory_per_rank", resources.memory_per_rank, None)) if value != most]
    if beyond:
        raise ValueError(
            f"task {task['uid']}: concurrent runs a function task as one call in one pool "
            f"worker, which cannot be given resources {', '.join(beyond)}; run the work as an "
            "executable (its resources are held on the node) or on a backend that places "
            "functions (e.g. dask)"
        )

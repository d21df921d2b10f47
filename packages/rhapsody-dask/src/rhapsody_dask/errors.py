"""Exceptions a Dask task can end with besides its own."""

from __future__ import annotations


class WorkerLostError(RuntimeError):
    """The Dask worker running the task died or was killed before the task ended.

    Attributes:
        uid: the task's uid.
        worker: the address of the last worker that was lost, when Dask reported it.
    """

    def __init__(self, uid: str, worker: str | None = None) -> None:
        self.uid = uid
        self.worker = worker
        where = f" {worker}" if worker else ""
        super().__init__(
            f"task {uid}: the Dask worker{where} running it was lost (it died or was killed) "
            "before the task ended"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.uid, self.worker))


class UnsatisfiableResourcesError(RuntimeError):
    """No worker of the Dask cluster advertises the resources a task asks for.

    Attributes:
        uid: the task's uid.
        resources: what the task asked for.
        missing: the resource names no single worker can supply in the asked quantity.
    """

    def __init__(self, uid: str, resources: dict[str, float], missing: list[str], detail: str) -> None:
        self.uid = uid
        self.resources = dict(resources)
        self.missing = list(missing)
        self.detail = detail
        super().__init__(f"task {uid}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.uid, self.resources, self.missing, self.detail))

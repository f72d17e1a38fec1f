"""Independent CPU trainings side by side in worker processes (threshold_source=oof's fold heads and final model,
a grid's rows when they have no fold heads).

Why: a head's training on cached features is a stream of small matrix products (batches of 16 rows), which the
threads of one process share badly. On the 2-core development machine two single-thread processes train two fold
heads in little more than the time one two-thread process trains one (benchmarks/fold_workers.py prints the
ratio), so the fold heads of threshold_source=oof go to worker processes when the CPU has the threads for them.

Workers are forked (Linux only) after the job is in place, so they inherit it (features included) without a copy
or a pickle, and nothing of the caller's script runs again (a spawned worker would re-import `__main__`, which
breaks scripts without an `if __name__ == "__main__"` guard). Each worker runs torch on one thread: that is what
makes forking a process that has used OpenMP safe (as in torch's DataLoader workers), and what the small products
want anyway. A task's result does not depend on which worker ran it; it can differ in the last bits from the same
task run with more threads (a matrix product's sums are split differently), which is why the number of workers
is part of the recorded config.
"""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

import torch

from .. import distributed

_JOB: Any = None  # the job of the pool being started: forked workers inherit it
_QUEUE: Any = None  # in a worker: where send() writes (inherited too)
_RELAY: Callable[[Any], None] | None = None  # tasks run in this process: where send() hands messages
_IN_WORKER = False  # set in each worker process as it starts


def plan(requested: int, tasks: int, device: torch.device) -> int:
    """How many worker processes run `tasks` independent trainings on `device`: 1 = in this process. requested:
    1 = in this process, N = up to N processes (at most one per task), 0 = one per thread torch may use (on the
    2-core development machine two workers and five finished five fold heads in the same time). Workers are used
    on a Linux CPU only, outside torchrun."""
    if requested < 0:
        raise ValueError(f"workers={requested}: expected 0 (auto), 1 (in this process) or more")
    if (requested == 1 or tasks < 2 or device.type != "cpu" or distributed.world_size() > 1
            or not sys.platform.startswith("linux")):
        return 1
    workers = min(tasks, torch.get_num_threads() if requested == 0 else requested)
    return workers if workers >= 2 else 1


def _start() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    torch.set_num_threads(1)


def in_worker() -> bool:
    """Whether this is a worker process of run() (a task's result must then travel back pickled)."""
    return _IN_WORKER


def _call(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(_JOB, task)


def send(message: Any) -> None:
    """From inside a task: hand `message` (picklable) to the `relay` of the run() that started the task, at once
    (a worker writes it to a pipe that run() reads while it waits): live progress lines, epoch rows. Without a
    relay it is dropped."""
    if _QUEUE is not None:  # in a worker
        _QUEUE.put(message)
    elif _RELAY is not None:  # a task run in this process
        _RELAY(message)


def run(fn: Callable[[Any, Any], Any], job: Any, tasks: Sequence[Any], workers: int,
        each: Callable[[int, Any], None] | None = None, start_order: Sequence[int] | None = None,
        relay: Callable[[Any], None] | None = None) -> list[Any]:
    """[fn(job, task) for task in tasks], in order; in `workers` forked processes when workers > 1 (each task's
    result is pickled back). `fn` must be a module-level function. `each(i, result)` is called in task order as
    soon as the results up to task i are in (progress lines). `start_order`: the order the workers take the tasks
    in (longest first keeps a long last task from running alone at the end); results keep the tasks' order.
    `relay(message)` receives what tasks send() while they run. An exception in a task is raised here as soon as
    it happens, and so is Ctrl-C: the other workers are terminated, not waited for. A worker that dies (killed,
    out of memory) raises RuntimeError saying so."""
    global _JOB, _QUEUE, _RELAY
    order = list(range(len(tasks))) if start_order is None else list(start_order)
    if sorted(order) != list(range(len(tasks))):
        raise ValueError(f"start_order {order} is not an order of the {len(tasks)} tasks")
    results: list[Any] = []
    if workers <= 1:  # one after the other, in the tasks' order
        _RELAY = relay
        try:
            for i, task in enumerate(tasks):
                results.append(fn(job, task))
                if each is not None:
                    each(i, results[-1])
            return results
        finally:
            _RELAY = None
    context = multiprocessing.get_context("fork")
    # In place before the pool forks (a fork-context pool starts all its workers at the first submit). A
    # SimpleQueue writes in put() itself, so what a task sent is in the pipe before its result is.
    _JOB, queue = job, context.SimpleQueue() if relay is not None else None
    _QUEUE = queue
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start)
    futures = []

    def drain() -> None:
        while queue is not None and not queue.empty():
            relay(queue.get())

    try:
        by_task = {i: pool.submit(_call, fn, tasks[i]) for i in order}
        futures = [by_task[i] for i in range(len(tasks))]
        pending = set(futures)
        while len(results) < len(futures):
            done, pending = wait(pending, timeout=0.1 if queue is not None else None, return_when=FIRST_COMPLETED)
            drain()
            for f in done:
                if f.exception() is not None:  # at once, not when the tasks before it are done
                    raise f.exception()
            while len(results) < len(futures) and futures[len(results)].done():
                results.append(futures[len(results)].result())
                if each is not None:
                    each(len(results) - 1, results[-1])
        drain()
        return results
    except BrokenProcessPool as e:
        raise RuntimeError(f"a worker process died before finishing its training ({e}); "
                           "set fold_workers=1 to train in this process") from e
    except BaseException:  # a failed task or Ctrl-C: the other trainings are not waited for
        for f in futures:
            f.cancel()
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _JOB = _QUEUE = None
        if queue is not None:
            queue.close()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's processes at once (Python 3.14 has this as a method; before, the processes are only
    reachable through the pool's own table)."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()

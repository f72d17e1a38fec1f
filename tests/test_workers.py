"""workers.py: independent trainings (threshold_source=oof's fold heads) in forked single-thread processes."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked on Linux")


def _pid_and_threads(job, task):
    return job, task, os.getpid(), torch.get_num_threads()


def _fails(job, task):
    if task == 1:
        raise ValueError(f"task {task} is broken")
    return task


def _started_at(job, task):
    import time

    t = time.monotonic()
    time.sleep(0.3)
    return task, t


def _sends_then_sleeps(job, task):
    import time

    from genrefusion.training import workers

    workers.send((task, "started", time.monotonic()))
    time.sleep(job)
    return task


def _slow_or_broken(job, task):
    import time

    if task == 1:
        raise ValueError("task 1 is broken")
    time.sleep(job)
    return task


def _dies(job, task):
    os._exit(3)


def _fails_while_another_runs(job, task):
    if task == 0:
        raise ValueError("the first task fails")
    import time

    time.sleep(20)
    (job / f"finished-{task}").write_text("a training nobody waits for")


def test_plan_uses_workers_only_where_they_can_help(monkeypatch):
    from genrefusion.training import workers

    cpu = torch.device("cpu")
    monkeypatch.setattr(workers.sys, "platform", "linux")
    monkeypatch.setattr(workers.torch, "get_num_threads", lambda: 4)
    assert workers.plan(0, 5, cpu) == 4  # one per thread of the budget
    assert workers.plan(0, 3, cpu) == 3  # never more than the tasks
    assert workers.plan(2, 5, cpu) == 2 and workers.plan(8, 5, cpu) == 5
    assert workers.plan(1, 5, cpu) == 1  # asked to stay in this process
    assert workers.plan(0, 1, cpu) == 1  # one task: nothing to run beside it
    assert workers.plan(0, 5, torch.device("cuda")) == 1  # a GPU runs them one after the other
    monkeypatch.setattr(workers.torch, "get_num_threads", lambda: 1)
    assert workers.plan(0, 5, cpu) == 1  # a one-thread budget
    monkeypatch.setattr(workers.sys, "platform", "darwin")
    assert workers.plan(4, 5, cpu) == 1  # fork only on Linux
    with pytest.raises(ValueError, match="workers=-1"):
        workers.plan(-1, 5, cpu)


def test_fold_workers_is_validated_and_is_not_part_of_the_recipe():
    from genrefusion.config import NOT_RECIPE, Config

    with pytest.raises(ValueError, match="fold_workers must be >= 0"):
        Config(fold_workers=-1).validate()
    assert "fold_workers" in NOT_RECIPE


@linux_only
def test_tasks_run_in_single_thread_worker_processes_in_order():
    from genrefusion.training import workers

    job = {"features": torch.arange(6.0)}
    out = workers.run(_pid_and_threads, job, list(range(5)), 2)
    assert [t for _, t, _, _ in out] == list(range(5))  # in task order
    assert all(torch.equal(j["features"], job["features"]) for j, _, _, _ in out)  # the job reached each worker
    pids = {pid for _, _, pid, _ in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {threads for _, _, _, threads in out} == {1}
    assert workers._JOB is None  # nothing of the job stays behind in this process


@linux_only
def test_a_failing_task_raises_here_and_a_dead_worker_is_named():
    from genrefusion.training import workers

    with pytest.raises(ValueError, match="task 1 is broken"):
        workers.run(_fails, None, [0, 1, 2], 2)
    with pytest.raises(RuntimeError, match="worker process died .* fold_workers=1"):
        workers.run(_dies, None, [0, 1], 2)


@linux_only
def test_a_failure_stops_the_other_workers_instead_of_waiting_for_them(tmp_path):
    from genrefusion.training import workers

    with pytest.raises(ValueError, match="the first task fails"):
        workers.run(_fails_while_another_runs, tmp_path, [0, 1], 2)
    assert not list(tmp_path.iterdir())  # task 1 was terminated, not run to its end


@linux_only
def test_fold_heads_in_workers_give_the_thresholds_of_fold_heads_in_this_process(synthetic_catalog, tiny_bert,
                                                                                tmp_path, monkeypatch):
    """The same trainings: each fold head is seeded by its fold, whichever worker trains it, in whatever order."""
    from genrefusion.training import experiment, workers
    from genrefusion.config import Config

    used = []
    real_run = workers.run

    def spy(fn, job, tasks, n, **kw):
        used.append(n)
        return real_run(fn, job, tasks, n, **kw)

    monkeypatch.setattr(workers, "run", spy)
    metrics = {}
    for n in (1, 3):
        cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="text",
                     text_encoder=str(tiny_bert), pooling="mean", epochs=2, lr=3e-3, threshold_mode="per_genre",
                     threshold_source="oof", threshold_folds=3, fold_workers=n, cache_dir=str(tmp_path / "cache"),
                     out=str(tmp_path)).validate()
        metrics[n] = experiment.run_experiment(cfg, run_dir=tmp_path / f"run-{n}", log=None)
    assert used == [1, 3]  # the second really ran in three processes
    assert metrics[3]["thresholds"] == pytest.approx(metrics[1]["thresholds"])
    assert metrics[3]["config"]["fold_workers"] == 3  # recorded with the run
    assert np.isclose(metrics[3]["test"]["f1_macro"], metrics[1]["test"]["f1_macro"])


@linux_only
def test_tasks_start_in_the_order_asked_and_results_keep_the_tasks_order():
    from genrefusion.training import workers

    seen = []
    out = workers.run(_started_at, None, [0, 1, 2, 3], 2, each=lambda i, r: seen.append(i), start_order=[3, 2, 1, 0])
    assert [task for task, _ in out] == [0, 1, 2, 3] and seen == [0, 1, 2, 3]
    started = {task: t for task, t in out}
    assert max(started[3], started[2]) < min(started[1], started[0])  # the two asked first ran first
    with pytest.raises(ValueError, match="not an order of the 4 tasks"):
        workers.run(_started_at, None, [0, 1, 2, 3], 2, start_order=[0, 0, 1, 2])


@linux_only
@pytest.mark.parametrize("n_workers", [1, 2])
def test_what_tasks_send_reaches_the_relay_while_they_run(n_workers):
    import time

    from genrefusion.training import workers

    got = []
    out = workers.run(_sends_then_sleeps, 1.0, [0, 1], n_workers, relay=lambda m: got.append((m, time.monotonic())))
    finished = time.monotonic()
    assert out == [0, 1] and sorted(m[0] for m, _ in got) == [0, 1]
    for (task, what, sent), received in got:
        assert what == "started" and received - sent < 0.9  # while the task still sleeps, not after the run
    assert finished - max(received for _, received in got) > 0.5
    workers.send("nobody listens")  # outside a run: dropped, no error


@linux_only
def test_a_failing_task_is_raised_without_waiting_for_the_tasks_before_it():
    import time

    from genrefusion.training import workers

    t = time.monotonic()
    with pytest.raises(ValueError, match="task 1 is broken"):
        workers.run(_slow_or_broken, 20.0, [0, 1], 2)
    assert time.monotonic() - t < 10  # task 0 sleeps 20 s and is terminated, not waited for

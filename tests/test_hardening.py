"""What an adversarial pass broke (issue 27), each case pinned: a full disk, run names that escape `out`."""
from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from genrefusion import atomic
from genrefusion.cli.commands import main
from genrefusion.config import Config

FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_a_full_disk_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    """safetensors reports ENOSPC as its own error type, which the commands would show as a traceback."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(FULL)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    target = tmp_path / "w.safetensors"
    with pytest.raises(OSError) as err:
        atomic.save_safetensors({"w": torch.zeros(3)}, target)
    assert err.value.errno == 28 and err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


@contextlib.contextmanager
def _tmpfs(mount: Path, options: str):
    """A tmpfs mounted at `mount` for the block. Mounting needs root (CI runs as root); elsewhere the test is
    skipped, counted as a skip with the reason."""
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"tmpfs-{uuid.uuid4().hex[:8]}", str(mount)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs: a real full disk."""
    with _tmpfs(tmp_path / "full", "size=64k") as mount:
        yield mount


def test_train_on_a_full_disk_ends_in_one_line(tiny_tmpfs, synthetic_catalog, tiny_bert, tiny_vit, tmp_path, capsys):
    args = ["train", f"data={synthetic_catalog}", "model=gmu", f"text_encoder={tiny_bert}",
            f"image_encoder={tiny_vit}", "epochs=1", f"cache_dir={tmp_path / 'cache'}", f"out={tiny_tmpfs}",
            "name=run", "threshold_source=val"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]  # progress bars share stderr
    assert "Traceback" not in err and len(errors) == 1 and "No space left on device" in errors[0], err[-2000:]
    assert str(tiny_tmpfs) in errors[0]  # the file it could not write is named
    assert not [p for p in tiny_tmpfs.rglob("*") if ".tmp" in p.name]  # nothing half-written


@pytest.mark.parametrize("name", ["../../escape", "a/../../b", "/etc/x", "..", ".", "", "a\\b", "a//b"])
def test_a_run_name_stays_inside_out(name, tmp_path):
    with pytest.raises(ValueError, match="config name=.*expected a folder inside out"):
        Config(name=name, out=str(tmp_path)).validate()
    Config(name="gmu/seed-0", out=str(tmp_path)).validate()  # the grid's own nested names stay inside


def test_train_refuses_an_escaping_name_before_any_work(tmp_path, capsys):
    assert main(["train", f"data={tmp_path / 'nothing.csv'}", f"out={tmp_path / 'runs'}", "name=../../escape"]) == 2
    assert "config name='../../escape'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_output_folder_under_a_file_is_refused_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write into the output folder") as err:
        atomic.check_writable(blocker / "runs")
    assert err.value.filename == str(blocker / "runs")


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only tmpfs: root ignores permission bits, so chmod cannot make an unwritable folder for root."""
    with _tmpfs(tmp_path / "ro", "ro,size=16k") as mount:
        yield mount


def test_a_read_only_output_folder_is_refused(read_only_mount):
    with pytest.raises(OSError, match="cannot write into the output folder.*Read-only"):
        atomic.check_writable(read_only_mount / "runs")


_HOLD = "import sys, time\nfrom genrefusion import atomic\nwith atomic.exclusive(sys.argv[1], 'grid'):\n" \
        "    print('held', flush=True)\n    time.sleep(60)\n"


def test_a_second_writer_into_one_folder_is_refused_until_the_first_dies(tmp_path):
    import os
    import signal
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(atomic.__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OSError, match="another grid is writing into this folder"):
            with atomic.exclusive(tmp_path / "out", "grid"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with atomic.exclusive(tmp_path / "out", "grid"):  # the lock died with its process
        pass


def _train_args(catalog, bert, vit, tmp_path, *extra):
    return ["train", f"data={catalog}", "model=gmu", f"text_encoder={bert}", f"image_encoder={vit}", "epochs=2",
            f"cache_dir={tmp_path / 'cache'}", "threshold_source=val", *extra]


def test_training_that_diverges_says_so_and_what_to_try(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, capsys):
    args = _train_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, f"out={tmp_path / 'runs'}", "lr=1e12")
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert "training diverged at epoch 1" in errors[0] and "lower learning rate (lr=1e+12" in errors[0], errors


def test_train_into_an_unwritable_out_stops_before_any_work(synthetic_catalog, tiny_bert, tiny_vit, tmp_path,
                                                            capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = _train_args(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, f"out={blocker / 'runs'}", "name=r")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot write into the output folder" in err and "epoch" not in err, err[-2000:]
    assert not (tmp_path / "cache").exists()  # not even the features were computed


def test_a_second_grid_into_the_same_out_is_refused(synthetic_catalog, tiny_bert, tmp_path, capsys):
    import os
    import signal
    import sys

    out = tmp_path / "grid"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(atomic.__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["grid", "--data", str(synthetic_catalog), "--text-encoder", str(tiny_bert), "--rows", "BERT",
                "--out", str(out), "--no-report", f"cache_dir={tmp_path / 'cache'}", "epochs=1"]
        assert main(args) == 2
        assert "another grid is writing into this folder" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert not (out / "grid.json").exists()

"""Several GPUs or machines: the same command under `torchrun`, one process per GPU.

    torchrun --nproc-per-node 4 -m genrefusion grid --data data/mmimdb --encoders thesis device=cuda

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); `init_from_env()` joins the process
group (NCCL on GPUs, gloo on CPU) and pins each process to its GPU. From then on:
  - feature extraction: each rank encodes every world_size-th shard of the shared, deterministic plan into the
    same cache folder, then all ranks read the complete table (features.py);
  - training: DistributedDataParallel, each rank taking a contiguous slice of every global batch, with the loss
    weighted so that the gradient equals the single-process gradient of that batch (train.py);
  - only rank 0 prints and writes run folders (`is_main()`).
Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op and the code runs as a single process.
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(backend: str | None = None, timeout_minutes: float = 60.0) -> bool:
    """Join the process group torchrun describes in the environment; returns True when running distributed.

    backend: default NCCL when CUDA is available, else gloo. The generous timeout covers ranks waiting at the end
    of feature extraction for the slowest rank's last shard."""
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        # Before any CUDA work: makes plain "cuda" mean this rank's GPU everywhere (model.to("cuda"), ...).
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> this rank's GPU when CUDA is available, else the CPU; 'cuda' under torchrun -> this
    rank's GPU. Anything else is passed to torch.device as is (a clear error for an unknown name)."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available (use device=cpu or device=auto)")
        return torch.device("cuda", local_rank() if is_distributed() else torch.cuda.current_device())
    return torch.device(name)


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous [start, stop) slice of n items that `rank_` takes: sizes differ by at most one, lower ranks
    take the extra items, and the slices in rank order tile [0, n)."""
    rank_, world = (rank() if rank_ is None else rank_), (world_size() if world is None else world)
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(value: int | float) -> int | float:
    """Sum a Python number over ranks (also a synchronisation point)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return type(value)(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of parameters that live outside the DDP-wrapped module (the encoders of end-to-end
    fine-tuning) the way DDP averages its own. A parameter no rank used keeps grad None, as in one process;
    one used on some ranks only counts zeros for the others."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(used)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for p, g, n in zip(params, torch._utils._unflatten_dense_tensors(flat, grads), used.tolist()):
        p.grad = g if n > 0 else None

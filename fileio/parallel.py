"""Data parallel runs: `torchrun --nproc_per_node=N train.py ...`, nanoGPT's way, with
torch.distributed (gloo between CPU processes, nccl between GPUs). A plain `python train.py` creates
no process group and none of this runs. docs/fsdp.md: bases that do not fit one GPU."""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


class RanksDisagree(Exception):
    """The ranks computed different masks: one line, exit 2 (main)."""


def torchrun_env():
    """(rank, world size, local rank) when torchrun started this process, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return tuple(int(os.environ.get(k, 0)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    return None


def join_process_group(args):
    """Under torchrun: gloo between CPU processes, nccl between GPUs, one GPU a process."""
    env = torchrun_env()
    if env is not None:
        if args.device == "cuda":
            torch.cuda.set_device(env[2])  # "cuda" now means this process's own GPU
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")


def rank_world():
    """(this process's rank, number of processes): (0, 1) for a plain run."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def from_rank0(value):
    """Rank 0's value (a picklable object) on every rank; a plain run's is its own."""
    box = [value]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def global_mean(loss):
    """The global batch's mean loss on every rank (equal shares: the mean of the ranks' means):
    every rank logs it and takes the same decision on a non-finite one."""
    if not dist.is_initialized():
        return loss.detach()
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


class SliceDropout(torch.nn.Module):
    """LoRA dropout on this rank's rows of the global batch with a one-process run's draws: every
    rank draws the whole batch's mask (their RNGs stay equal) and keeps its rows, so the result
    does not depend on N. Exact on the CPU, where nn.Dropout is x·bernoulli(1−p)/(1−p) over x's
    shape; CUDA's fused dropout draws otherwise (there N > 1 drops other inputs than N = 1)."""

    def __init__(self, p, rank, world):
        super().__init__()
        self.p, self.rank, self.world = p, rank, world

    def forward(self, x):  # x (B/N, T, n)
        if not self.training or self.p == 0:
            return x
        b = x.shape[0]
        keep = x.new_empty((b * self.world, *x.shape[1:])).bernoulli_(1 - self.p)  # (B, T, n)
        return x * keep[self.rank * b:(self.rank + 1) * b].div(1 - self.p)  # a copy: B/N rows kept


def ranks_agree(masks, what):
    """Every rank selected from the same all-reduced statistics and the same weights, so the masks
    must be equal bit for bit; one checksum a matrix, compared across ranks, stops the run before
    a rank trains another model (a nondeterministic kernel, a bug). uᵀ·M·v with fixed u, v in
    [1, 2): a flipped entry moves it by at least 1, far above float64's rounding."""
    if not dist.is_initialized():
        return
    mine = []
    for m in masks.values():  # (rows, cols) bool
        g = torch.Generator().manual_seed(m.numel())
        u, v = (1 + torch.rand(k, generator=g, dtype=torch.float64).to(m.device) for k in m.shape)
        mine.append((u @ m.double() @ v).item())
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    bad = sum(len(set(sums)) > 1 for sums in zip(*every))
    if bad:
        raise RanksDisagree(f"the {len(every)} processes disagree on {bad} of {len(mine)} masks "
                            f"after {what}; stopped")


def data_parallel(model, loras, dropout):
    """What the training steps call: the model itself, or under torchrun DDP over its adapters
    (it averages their gradients). The masks (buffers) are not broadcast: every rank computes
    them; with N > 1 the adapters' dropout draws the one-process run's masks (SliceDropout)."""
    if not dist.is_initialized():
        return model
    rank, world = rank_world()
    for lin in loras if world > 1 else ():
        lin.dropout = SliceDropout(dropout, rank, world)
    return DistributedDataParallel(model, init_sync=False, forward_sync_buffers=False)

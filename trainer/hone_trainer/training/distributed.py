"""One place for distributed setup: the launcher's variables, the process group, devices and the seed.

Under ``torchrun`` the launcher sets RANK, WORLD_SIZE and the rendezvous address; a single
process with no launcher (``hone run`` on a laptop) gets the same variables for a group of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

#: How long a collective may wait for the slowest rank (DeepSpeed's default, 30 minutes). Training
#: steps are balanced, so this only ends runs whose peer has really hung.
COLLECTIVE_TIMEOUT = "HONE_COLLECTIVE_TIMEOUT_SECONDS"
#: How long the other ranks wait for work one rank does alone (publishing, merging, hashing, uploading a
#: checkpoint or the model to S3): hours for a large model, far past a collective's timeout.
RANK0_WORK_TIMEOUT = "HONE_RANK0_WORK_TIMEOUT_SECONDS"


@dataclass
class Distributed:
    torch: Any
    dist: Any
    deepspeed: Any
    rank: int
    world: int
    local_rank: int
    gpu: bool
    device: Any
    dtype: Any
    #: a gloo group with RANK0_WORK_TIMEOUT, to wait in while one rank works alone (:func:`wait_for_rank0`)
    waits: Any = None

    def wait_for_rank0(self) -> None:
        """Wait for the rank(s) working alone, past the collective timeout: a barrier in the gloo group of
        :data:`RANK0_WORK_TIMEOUT` (on CPU sockets, so NCCL's watchdog has nothing to time out). A rank that
        fails meanwhile closes its connections, which ends the wait at once with an error."""
        self.dist.barrier(group=self.waits)

    def peak_memory(self) -> int:
        """This rank's peak memory so far, in bytes: on a GPU what PyTorch's allocator reserved (what an
        out-of-memory error counts against), on CPU the process's peak resident memory (what a pod's memory
        limit counts against)."""
        if self.gpu:
            return int(self.torch.cuda.max_memory_reserved(self.device))
        try:
            with open("/proc/self/status") as fp:
                for line in fp:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def launcher_env() -> None:
    """A single process without torchrun still needs the variables torch.distributed reads. Port 0: its store
    binds a port the kernel picks, free by construction. (A port found free beforehand and bound seconds later,
    after the imports, can meanwhile be taken by any other process on the machine, and the trainer then fails.)"""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="0")


def init(seed: int) -> Distributed:
    """Join the process group (gloo on CPU, NCCL on GPUs), pick this rank's device, seed everything."""
    launcher_env()
    import torch
    import torch.distributed as dist

    gpu = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    import deepspeed
    import transformers

    # The shm all-reduce op is only for inference and JIT-compiles for ~20 s on CPU.
    getattr(deepspeed.ops, "__compatible_ops__", {})["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo",
                               timeout=timedelta(seconds=float(os.environ.get(COLLECTIVE_TIMEOUT, "1800"))))
    waits = dist.new_group(backend="gloo", timeout=timedelta(seconds=float(os.environ.get(RANK0_WORK_TIMEOUT,
                                                                                           "86400"))))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if gpu:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    transformers.set_seed(seed)
    return Distributed(torch, dist, deepspeed, dist.get_rank(), dist.get_world_size(), local_rank, gpu, device,
                       torch.bfloat16 if gpu else torch.float32, waits)

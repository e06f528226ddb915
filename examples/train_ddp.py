"""The MNIST-1D model with fastconv layers, trained data-parallel under DistributedDataParallel.

Launch one process per CPU socket or per GPU with torchrun; each process trains on its own share of
every batch and DDP averages the gradients, so all processes hold the same weights after each step.

    # CPU, 2 processes on this machine, gloo over loopback
    torchrun --nnodes=1 --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29500 examples/train_ddp.py

    # GPUs: one process per GPU, NCCL (the process's GPU is cuda:LOCAL_RANK)
    torchrun --nnodes=1 --nproc_per_node=8 examples/train_ddp.py --device cuda

On GPUs use the NCCL backend (the default here with --device cuda): call
torch.cuda.set_device(local_rank) before init_process_group("nccl"), move the model to that GPU and
wrap it with DistributedDataParallel(model, device_ids=[local_rank]). fastconv's CUDA kernels run on
the current stream, so DDP's gradient all-reduce overlaps with the backward pass as it does for
torch.nn layers. Multi-node: the same command on every node with --nnodes, --node_rank and the
address of node 0.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastconv import nn as fnn
from train_mnist1d import DTYPES, build_model, load_mnist1d


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100, help="global batch, split across processes")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")

    dtype = DTYPES[args.dtype]
    x_train, y_train, x_test, y_test = load_mnist1d(dtype)
    torch.manual_seed(args.seed)  # every process starts from the same weights (DDP also broadcasts rank 0's)
    model = torch.nn.parallel.DistributedDataParallel(
        build_model(fnn).to(device, dtype), device_ids=[local_rank] if args.device == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(x_train) // args.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)  # the same global order in every process
    share = args.batch_size // world

    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            mine = batch[rank * share:(rank + 1) * share]  # this process's share of the global batch
            loss = F.cross_entropy(model(x_train[mine].to(device)), y_train[mine].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            scheduler.step()
        if rank == 0 and (epoch + 1) % max(1, args.epochs // 5) == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: last loss {loss.item():.3f}", flush=True)

    model.eval()
    with torch.no_grad():
        accuracy = (model.module(x_test.to(device)).argmax(1).cpu() == y_test).float().mean().item() * 100
    if rank == 0:
        print(f"{world} processes ({backend}), {args.epochs} epochs in {time.perf_counter() - start:.1f} s: "
              f"test accuracy {accuracy:.1f}%")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

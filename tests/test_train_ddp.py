"""DDP on CPU: 2 gloo processes, each synthesising its own stream (seed + rank); only rank 0 writes."""
import os
import socket

import torch
import torch.multiprocessing as mp

from tests.test_train import BlobLesions, tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, result: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from synthgen.train.loop import train
    try:
        cfg = tiny(out, steps=2, val_every=2, ckpt_every=1)
        cfg.device = "cpu"
        metrics = train(cfg, lesions=(BlobLesions(), BlobLesions()), progress=False)
        # what each rank trained on, and the weights it ended with
        import synthgen
        from synthgen.data.sources import tissue_maps
        from synthgen.data.training import TrainingBatches
        maps = tissue_maps(voxel_size=cfg.generator.voxel_size)
        image, _ = TrainingBatches(synthgen.SynthGenerator(cfg.generator), maps, cfg.seed + rank, 1, "cpu")(0)
        torch.save({"metrics": metrics, "image": image}, f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_ranks(tmp_path):
    out, result = str(tmp_path / "run"), str(tmp_path / "result")
    mp.spawn(_worker, args=(2, _free_port(), out, result), nprocs=2, join=True)
    r0, r1 = torch.load(f"{result}.0", weights_only=False), torch.load(f"{result}.1", weights_only=False)
    assert r0["metrics"]["step"] == r1["metrics"]["step"] == 2
    assert "val_dice_lesion" in r0["metrics"] and "val_dice_lesion" not in r1["metrics"]   # rank 0 validates
    assert not torch.equal(r0["image"], r1["image"])          # each rank synthesises its own stream
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2            # every rank's random state is saved
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert sorted(p for p in os.listdir(out) if not p.startswith(".")) == \
        ["config.json", "curves.png", "last.pt", "metrics.csv", "prev.pt", "val_samples.png"]


def _resume_worker(rank: int, world: int, port: int, tmp: str):
    """Rank ``rank`` of: a run to step 2 without a stop, and the same run stopped after step 1 and resumed; it saves
    both end weights and the torch random state the resumed run starts its steps with."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from synthgen.train import loop
    lesions = (BlobLesions(), BlobLesions())
    try:
        loop.train(tiny(os.path.join(tmp, "whole"), steps=2, device="cpu"), lesions=lesions, progress=False)
        cut = tiny(os.path.join(tmp, "cut"), steps=2, device="cpu")
        loop.train(cut, lesions=lesions, progress=False, stop_at=1)
        dist.barrier()              # rank 0 has written the checkpoint before any rank looks for it
        torch.manual_seed(999)      # whatever this process's state is now, the resume must replace it
        started = {}
        real_steps = loop.run_steps
        loop.run_steps = lambda run, data, end: (started.update(torch=torch.get_rng_state()),
                                                 real_steps(run, data, end))[1]
        loop.train(cut, lesions=lesions, progress=False, resume=True)
        torch.save(started, os.path.join(tmp, f"started.{rank}"))
    finally:
        dist.destroy_process_group()


def test_ddp_resume_restores_each_ranks_own_random_state(tmp_path):
    tmp = str(tmp_path)
    mp.spawn(_resume_worker, args=(2, _free_port(), tmp), nprocs=2, join=True)
    ckpt = torch.load(tmp_path / "cut" / "prev.pt", weights_only=True)       # the step-1 checkpoint resumed from
    assert ckpt["step"] == 1 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    for rank in range(2):
        started = torch.load(tmp_path / f"started.{rank}", weights_only=True)
        assert torch.equal(started["torch"], ckpt["rng"][rank]["torch"]), rank
    # rank 1's dropout masks feed the averaged gradients: only its own stream gives the uninterrupted run's weights
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)

"""DDP with 2 CPU processes (gloo, launched by torchrun) gives the single-process gradients."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from safetensors.torch import save_file
    from sangal.config import LossConfig
    from sangal.runtime.distributed import init_distributed, cleanup
    from sangal.train.reid import step_losses
    from sangal.models.reid_net import ReIDNet

    out = sys.argv[1]
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = ReIDNet(4, [2, 2, 4], mode="id+attr", backbone="resnet18", pretrained=False)
    for m in model.modules():  # BN statistics are per process on CPU (no SyncBN): freeze them
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 64, 32, generator=g)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    attrs = torch.stack([torch.randint(0, c, (8,), generator=g) for c in (2, 2, 4)], 1)
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
        per = 8 // info.world_size
        sl = slice(info.rank * per, (info.rank + 1) * per)
        images, pids, attrs = images[sl], pids[sl], attrs[sl]
    terms = step_losses(model, images, pids, attrs, None, LossConfig())
    terms["total"].backward()
    net = model.module if info.distributed else model
    grads = {n: p.grad.contiguous() for n, p in net.named_parameters() if p.grad is not None}
    grads["__loss_triplet"] = terms["triplet"].detach().reshape(1)
    save_file(grads, os.path.join(out, f"grads_{info.rank}_{info.world_size}.safetensors"))
    cleanup(info)
''')


@pytest.mark.slow
def test_two_process_ddp_first_step_gradients_equal_single_process(tmp_path, monkeypatch):
    script = tmp_path / "step.py"
    script.write_text(SCRIPT)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # the single-process reference joins no process group
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")  # in this process: one interpreter and torch import fewer
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path)], check=True, env=env, timeout=300)
    single = load_file(tmp_path / "grads_0_1.safetensors")
    rank0 = load_file(tmp_path / "grads_0_2.safetensors")
    rank1 = load_file(tmp_path / "grads_1_2.safetensors")
    # Triplet mining saw the whole global batch on each rank.
    assert torch.allclose(rank0["__loss_triplet"], single["__loss_triplet"], atol=1e-6)
    assert single.keys() == rank0.keys() == rank1.keys()
    checked = 0
    for name, grad in single.items():
        if name.startswith("__"):
            continue
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
        assert torch.allclose(rank0[name], grad, rtol=1e-4, atol=1e-6), \
            f"{name}: max diff {(rank0[name] - grad).abs().max():.3g}"
        checked += 1
    assert checked > 50
    # A wrong reduction (e.g. no triplet gather) would show up here: the gradients are not trivially zero.
    assert max(g.abs().max().item() for n, g in single.items() if not n.startswith("__")) > 1e-4

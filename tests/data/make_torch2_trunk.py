#!/usr/bin/env python3
"""Writes tests/data/trunk_resnet_torch2.pt and its reference outputs (.json), with torch 2.x.

A trunk saved by the PyTorch users actually run (2.x) must load in the libtorch Lethe builds
against (Debian's 1.13) and compute what PyTorch computes: tests/trainer/test_trunk.cpp checks
both with these files. Debian has no torch 2.x, so the files are committed; to make them again:
    python3 -m venv /tmp/torch2 && /tmp/torch2/bin/pip install torch numpy
    /tmp/torch2/bin/python tests/data/make_torch2_trunk.py tests/data
The trunk has the layers such a model brings: convolutions, batch norm (eval mode), a residual
block, GELU, adaptive average pooling; it takes the test fixture's records, [N, 6, 6] float32 in
[0, 1] (tests/trainer/cli_job_fixture.h), to [N, 16].
"""
import json
import os
import sys

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(nn.functional.gelu(self.bn1(self.conv1(x)))))
        return nn.functional.gelu(x + y)


class ResNetTrunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU())
        self.block = Residual(8)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.proj = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.block(self.stem(x.unsqueeze(1))))
        return torch.relu(self.proj(torch.flatten(y, 1)))


def main(out_dir):
    if int(torch.__version__.split(".")[0]) < 2:
        sys.exit(f"make_torch2_trunk.py: run it with torch 2.x (this is {torch.__version__}); see the docstring")
    torch.manual_seed(5)
    model = ResNetTrunk()
    # Batch-norm statistics other than the initial 0 and 1, as a trained model has.
    with torch.no_grad():
        for bn in (model.stem[1], model.block.bn1, model.block.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    scripted = torch.jit.script(model.eval())
    scripted.save(os.path.join(out_dir, "trunk_resnet_torch2.pt"))
    inputs = torch.rand(4, 6, 6)
    with torch.no_grad():
        outputs = scripted(inputs)
    with open(os.path.join(out_dir, "trunk_resnet_torch2.json"), "w") as f:
        json.dump({"torch": torch.__version__, "inputs": inputs.tolist(), "outputs": outputs.tolist()}, f)
    print("trunk_resnet_torch2.pt", torch.__version__, tuple(outputs.shape))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))

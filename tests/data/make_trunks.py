#!/usr/bin/env python3
"""Writes the small TorchScript trunks that tests/trainer/test_trunk.cpp loads (model.trunk).

Run with Debian's python3-torch (1.13), which wrote the committed files:
    /usr/bin/python3 tests/data/make_trunks.py tests/data
A file saved by torch 1.13 loads in libtorch 1.13 and 2.x alike (the trunk tests pass on a build
against torch 2.11: README, "Build by hand"); make_torch2_trunk.py covers files saved by 2.x. Each trunk takes the test
fixture's records, [N, 6, 6] float32 in [0, 1] (tests/trainer/cli_job_fixture.h), as any PyTorch
model saved for Lethe would take [N, *feature_shape] (docs/BACKBONE.md).
"""
import os
import sys

import torch
from torch import nn


class FlatTrunk(nn.Module):
    """[N, 6, 6] -> [N, 20]: a dense layer, for architecture mlp."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(36, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dense(x.flatten(1)))


class ConvTrunk(nn.Module):
    """[N, 6, 6] -> [N, 4, 6, 6]: one 3x3 convolution, feature maps for architecture convnet."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.unsqueeze(1)))


class RankThreeTrunk(nn.Module):
    """[N, 6, 6] -> [N, 6, 6]: neither [N, D] nor [N, C, H, W], which Lethe refuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def main(out_dir):
    torch.manual_seed(7)
    os.makedirs(out_dir, exist_ok=True)
    # trunk_flat_other.pt: the same shape with other weights (a trunk replaced after pretraining).
    for name, module in (("trunk_flat.pt", FlatTrunk()), ("trunk_conv.pt", ConvTrunk()),
                         ("trunk_rank3.pt", RankThreeTrunk()), ("trunk_flat_other.pt", FlatTrunk())):
        scripted = torch.jit.script(module.eval())
        scripted.save(os.path.join(out_dir, name))
        print(name, tuple(scripted(torch.zeros(2, 6, 6)).shape))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))

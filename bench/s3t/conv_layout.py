#!/usr/bin/env python3
"""The demo convnet's two frozen conv blocks in PyTorch, four ways, side by side in one run: ReLU
then max-pool against max-pool then ReLU (the two commute), each with a contiguous and a
channels-last weight. Prints ms per forward pass of 1024 images and per training step of 128
(gradients for the weights, as in pretraining). What trainer/model.cpp and trainer/lora.cpp do
rests on it (docs/BENCHMARKS.md, "S3T training").

  /usr/bin/python3 bench/s3t/conv_layout.py --threads 1
"""
import argparse
import time

import torch
import torch.nn.functional as F


def blocks(x, w1, b1, w2, b2, pool_first):
    for w, b in ((w1, b1), (w2, b2)):
        x = F.conv2d(x, w, b, padding=1)
        x = torch.relu(F.max_pool2d(x, 2)) if pool_first else F.max_pool2d(torch.relu(x), 2)
    return x


def timed(fn, repeat):
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    w1, b1 = torch.randn(32, 1, 3, 3) / 3, torch.zeros(32)
    w2, b2 = torch.randn(64, 32, 3, 3) / 17, torch.zeros(64)
    images, batch = torch.rand(1024, 1, 28, 28), torch.rand(128, 1, 28, 28)
    reference = blocks(images, w1, b1, w2, b2, False)
    print(f"# torch {torch.__version__}, {args.threads} thread(s); ms, mean of {args.repeat} runs")
    for pool_first in (False, True):
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            p = [t.clone().contiguous(memory_format=fmt) if t.dim() == 4 else t.clone() for t in (w1, b1, w2, b2)]
            with torch.no_grad():
                forward = timed(lambda: blocks(images, *p, pool_first), args.repeat)
                diff = (blocks(images, *p, pool_first) - reference).abs().max().item()
            q = [t.requires_grad_() for t in p]
            step = timed(lambda: blocks(batch, *q, pool_first).sum().backward(), args.repeat)
            print(f"{'pool, relu' if pool_first else 'relu, pool'}  weight {'channels-last' if channels_last else 'contiguous   '}"
                  f"  forward 1024: {forward:6.0f}   training step 128: {step:5.0f}   max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Baseline (a) of issue 13: the demo's network trained end to end, with no unlearning, in plain PyTorch.

The network of launch/examples/fashion_s3t.yaml (architecture convnet: 3x3 convolutions with
padding 1, ReLU and 2x2 max-pooling for conv_widths, then Linear + ReLU for widths, then a linear
head), every weight trained with Adam on all live non-public records of a Lethe dataset file (the
same split S3T and noisy GD train on), from a fresh initialization. Test accuracy on a second
Lethe dataset file. Reads the files with h5py (docs/DATA_FORMAT.md); prints one JSON object.

  /usr/bin/python3 bench/baselines/end_to_end.py --train demo-out/data/fashion-train.h5 \
      --test demo-out/data/fashion-test.h5 --epochs 5 --threads 2
"""
import argparse
import json
import time

import h5py
import numpy as np
import torch
from torch import nn


def read_records(path, private_only):
    with h5py.File(path, "r") as f:
        features = f["features"][...]
        labels = f["labels"][...].astype(np.int64)
        keep = f["tombstoned"][...] == 0
        if private_only:
            keep &= f["public"][...] == 0
    x = torch.from_numpy(features[keep].astype(np.float32) / 255.0).reshape(int(keep.sum()), 1, 28, 28)
    return x, torch.from_numpy(labels[keep])


def network(conv_widths, widths, classes):
    layers, channels, side = [], 1, 28
    for c in conv_widths:
        layers += [nn.Conv2d(channels, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels, side = c, side // 2
    layers.append(nn.Flatten())
    inputs = channels * side * side
    for w in widths:
        layers += [nn.Linear(inputs, w), nn.ReLU()]
        inputs = w
    layers.append(nn.Linear(inputs, classes))
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=0.001)
    ap.add_argument("--conv-widths", default="32,64")
    ap.add_argument("--widths", default="256,128,128,128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x, y = read_records(args.train, private_only=True)
    tx, ty = read_records(args.test, private_only=False)
    model = network([int(v) for v in args.conv_widths.split(",")], [int(v) for v in args.widths.split(",")], 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    start = time.time()
    per_epoch = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for s in range(0, len(x), args.batch_size):
            index = order[s:s + args.batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(tx[s:s + 1024]).argmax(1) == ty[s:s + 1024]).sum()) for s in range(0, len(tx), 1024))
        per_epoch.append(correct / len(tx))
        print(f"# epoch {epoch + 1}: test accuracy {per_epoch[-1]:.4f} ({time.time() - start:.0f} s)", flush=True)
    print(json.dumps({"baseline": "end_to_end", "train_records": len(x), "test_records": len(tx),
                      "epochs": args.epochs, "accuracy": per_epoch[-1], "accuracy_by_epoch": per_epoch,
                      "seconds": time.time() - start, "torch": torch.__version__, "threads": args.threads}))


if __name__ == "__main__":
    main()

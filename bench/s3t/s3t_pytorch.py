#!/usr/bin/env python3
"""The same S3T training as `lethe train`, done the straightforward way in PyTorch.

Same model family (MLP, or convnet: frozen 3x3 conv + ReLU + 2x2 max-pool blocks under the dense
blocks; LoRA on the top L dense blocks, linear head), the same backbone file
(docs/BACKBONE.md), the same epochs, batch size, learning rate and Adam optimizer; every step runs
the full forward pass through the frozen backbone instead of Lethe's activation cache. Records are
read from the IDX files and assigned to public/shard/slice by a keyed hash (not Lethe's SipHash,
so the split differs record by record but not in distribution). Prints one JSON line.

  python3 bench/s3t/s3t_pytorch.py --config launch/examples/fashion_s3t.yaml \
      --images train-images-idx3-ubyte.gz --labels train-labels-idx1-ubyte.gz \
      --test-images t10k-images-idx3-ubyte.gz --test-labels t10k-labels-idx1-ubyte.gz
"""
import argparse, gzip, hashlib, json, os, struct, time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import yaml


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def bucket(seed, salt, i, n):
    h = hashlib.blake2b(f"{seed}:{salt}:{i}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % n


class Model(torch.nn.Module):
    def __init__(self, conv_widths, widths, sites, rank, alpha, classes, backbone):
        super().__init__()
        self.weights, self.biases = [], []
        self.convs = len(conv_widths)  # blocks 0 .. convs-1 are convolutions (convnet), frozen
        with h5py.File(backbone, "r") as f:
            for b in range(self.convs + len(widths)):
                self.weights.append(torch.tensor(np.array(f[f"blocks/{b}/weight"]), dtype=torch.float32))
                self.biases.append(torch.tensor(np.array(f[f"blocks/{b}/bias"]), dtype=torch.float32))
            self.head_w0 = torch.tensor(np.array(f["head/weight"]), dtype=torch.float32)
            self.head_b0 = torch.tensor(np.array(f["head/bias"]), dtype=torch.float32)
        self.sites, self.scale, self.rank = sites, alpha / rank, rank
        self.reset()

    def reset(self):
        n = len(self.weights)
        self.A = [None] * (self.sites + 1)
        self.B = [None] * (self.sites + 1)
        for s in range(1, self.sites + 1):
            w = self.weights[n - s]
            bound = 1.0 / w.shape[1] ** 0.5
            self.A[s] = ((torch.rand(self.rank, w.shape[1]) * 2 - 1) * bound).requires_grad_(False)
            self.B[s] = torch.zeros(w.shape[0], self.rank)
        self.head_w = self.head_w0.clone()
        self.head_b = self.head_b0.clone()
        self.depth = 0

    def forward(self, x):
        n = len(self.weights)
        h = x
        for b in range(self.convs):
            h = F.max_pool2d(torch.relu(F.conv2d(h, self.weights[b], self.biases[b], padding=1)), 2)
        h = h.flatten(1)
        for b in range(self.convs, n):
            y = F.linear(h, self.weights[b], self.biases[b])
            s = n - b
            if s <= self.depth:
                y = y + F.linear(F.linear(h, self.A[s]), self.B[s]) * self.scale
            h = torch.relu(y)
        return F.linear(h, self.head_w, self.head_b)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--test-images", required=True)
    p.add_argument("--test-labels", required=True)
    p.add_argument("--public-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    cfg = yaml.safe_load(open(a.config))
    base = os.path.dirname(os.path.abspath(a.config))
    torch.set_num_threads(a.threads)
    torch.manual_seed(cfg.get("seed", 0))
    m, L, B = cfg["s3t"]["shards"], cfg["s3t"]["slices"], cfg["s3t"]["sequences"]
    mc, tc = cfg["model"], cfg["training"]
    architecture = mc.get("architecture", "mlp")
    assert architecture in ("mlp", "convnet"), "this peer implements the MLP and convnet families"
    conv_widths = mc.get("conv_widths", []) if architecture == "convnet" else []
    x = torch.tensor(read_idx(a.images), dtype=torch.float32).div_(255).unsqueeze(1)
    y = torch.tensor(read_idx(a.labels), dtype=torch.int64)
    keep = [i for i in range(len(y)) if bucket(1, "public", i, 10**6) >= a.public_fraction * 10**6]
    shard_of = {i: bucket(1, "shard", i, m) for i in keep}
    slice_of = {i: bucket(1, "slice", i, L) for i in keep}
    model = Model(conv_widths, mc["widths"], L, mc["lora_rank"], mc["lora_alpha"], mc.get("num_classes", 10),
                  os.path.join(base, cfg["backbone"]))
    orders = [[(b + k) % L for k in range(L)] for b in range(B)]  # cyclic rotations (B <= L)
    final = {}
    samples, start = 0, time.perf_counter()
    for shard in range(m):
        rows = [i for i in keep if shard_of[i] == shard]
        for b, order in enumerate(orders):
            model.reset()
            for step in range(1, L + 1):
                model.depth = step
                idx = torch.tensor([i for i in rows if slice_of[i] in order[:step]])
                params = [model.A[step], model.B[step], model.head_w, model.head_b]
                for t in params:
                    t.requires_grad_(True)
                opt = torch.optim.Adam(params, lr=tc["learning_rate"])
                for _ in range(tc["epochs"]):
                    perm = idx[torch.randperm(len(idx))]
                    for s in range(0, len(perm), tc["batch_size"]):
                        batch = perm[s:s + tc["batch_size"]]
                        opt.zero_grad()
                        F.cross_entropy(model(x[batch]), y[batch]).backward()
                        opt.step()
                        samples += len(batch)
                for t in params:
                    t.requires_grad_(False)
            final[(shard, b)] = ([t if t is None else t.clone() for t in model.A], [t if t is None else t.clone() for t in model.B],
                                 model.head_w.clone(), model.head_b.clone())
    seconds = time.perf_counter() - start
    tx = torch.tensor(read_idx(a.test_images), dtype=torch.float32).div_(255).unsqueeze(1)
    ty = torch.tensor(read_idx(a.test_labels), dtype=torch.int64)
    with torch.no_grad():
        probs = torch.zeros(len(ty), mc.get("num_classes", 10))
        for shard in range(m):  # sequence 0 serves every shard at full depth
            model.A, model.B, model.head_w, model.head_b = final[(shard, 0)]
            model.depth = L
            probs += torch.softmax(model(tx), 1)
        accuracy = (probs.argmax(1) == ty).float().mean().item()
    print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "threads": a.threads, "samples": samples,
                      "seconds": seconds, "samples_per_second": samples / seconds, "accuracy": accuracy}))


if __name__ == "__main__":
    main()

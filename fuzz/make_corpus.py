#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (checked in; rerun after
changing it). Small, real inputs: valid and invalid requests, CSV files, tiny IDX files (two real
Fashion-MNIST images when /usr/share/datasets/fashion-mnist is installed), the example job configs."""
import gzip
import json
import pathlib
import shutil
import struct

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "0123456789abcdef" * 4  # fuzz_http_request.cpp's kToken


def write(target, name, data):
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def deletion_requests():
    valid = {
        "records": {"records": ["train-17", "train-42"]},
        "records_dup": {"records": ["a", "b", "a"], "idempotency_key": "k-1"},
        "subject": {"subject": "subject-0007"},
        "subject_key": {"subject": "s", "idempotency_key": "2026-12-01T10:00:00Z#1"},
        "unicode": {"records": ["r\u00e9cord-\u4e00"]},
    }
    for name, body in valid.items():
        write("fuzz_deletion_request", f"valid_{name}.json", json.dumps(body))
    invalid = {
        "both": '{"records":["a"],"subject":"s"}',
        "neither": '{"idempotency_key":"k"}',
        "empty_list": '{"records":[]}',
        "not_string": '{"records":[1,null,true]}',
        "unknown": '{"record":["a"]}',
        "control": '{"subject":"a\\u0001b"}',
        "too_long": json.dumps({"subject": "x" * 257}),
        "array": '["a","b"]',
        "not_json": "records=a,b",
        "truncated": '{"records":["a",',
        "nested": '{"records":[["a"]]}',
        "bad_utf8": b'{"subject":"\xc3\x28"}',
    }
    for name, body in invalid.items():
        write("fuzz_deletion_request", f"invalid_{name}.json", body)


def http_requests():
    body = json.dumps({"records": ["train-1", "train-2"], "idempotency_key": "abc"})
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    post = (f"POST /v1/deletions HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    seeds = {
        "healthz": "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "post_deletion": post,
        "post_subject_http10": (f"POST /v1/deletions HTTP/1.0\r\n{auth}Content-Length: 17\r\n\r\n" + '{"subject":"s-1"}'),
        "chunked": (f"POST /v1/deletions HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
                    f"{len(body):x}\r\n{body}\r\n0\r\n\r\n"),
        "expect_continue": (f"POST /v1/deletions HTTP/1.1\r\nHost: x\r\n{auth}Expect: 100-continue\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n{body}"),
        "get_receipt_query": f"GET /v1/deletions/42?wait=1 HTTP/1.1\r\nHost: x\r\n{auth}\r\n",
        "head_models": f"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n{auth}\r\n",
        "pipelined": ("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post + f"GET /metrics HTTP/1.1\r\n{auth}Connection: close\r\n\r\n"),
        "missing_token": f"POST /v1/deletions HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n{body}",
        "wrong_token": "GET /v1/models HTTP/1.1\r\nAuthorization: bearer wrong\r\n\r\n",
        "lowercase_scheme": f"GET /v1/models HTTP/1.1\r\nauthorization: bEARER {TOKEN}\r\n\r\n",
        "bad_target": "GET v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        "too_large": f"POST /v1/deletions HTTP/1.1\r\n{auth}Content-Length: 2000000\r\n\r\n{{",
        "bad_json_body": f"POST /v1/deletions HTTP/1.1\r\n{auth}Content-Length: 9\r\n\r\n{{records:",
        "garbage": "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    }
    for name, text in seeds.items():
        write("fuzz_http_request", f"{name}.http", text.encode("latin-1"))


def csv_files():
    seeds = {
        # even and odd lengths: fuzz_ingest_csv.cpp picks float32 / uint8 features by the parity
        "floats.csv": "label,f0,f1,f2\n0,0.5,1e-3,-2\n1,3,4,5.25\n2,+1,0,0\n",
        "uint8.csv": "label,p0,p1,p2,p3\n3,0,255,17,4\n9,1,2,3,4\n7,9,9,9,9\n",
        "ids_subjects.csv": "id,subject,label,x,y\nr-1,alice,0,1,2\nr-2,alice,1,3,4\nr-3,bob,0,5,6\n",
        "quoted.csv": 'id,label,"a,b",c\n"r""1",1,"2",3\n"r2",0,"4","5"\n',
        "crlf_blank.csv": "label,a\r\n\r\n1,2\r\n  \r\n0,3\r\n",
        "ragged.csv": "label,a,b\n1,2\n",
        "not_number.csv": "label,a\n1,abc\n",
        "duplicate_id.csv": "id,label,a\nx,1,2\nx,0,3\n",
        "mapping.csv": "id,subject\nr-1,alice\nr-2,bob\n",
        "header_only.csv": "label,a,b\n",
        "unclosed_quote.csv": 'label,a\n1,"2\n',
    }
    for name, text in seeds.items():
        write("fuzz_ingest_csv", name, text)
    write("fuzz_ingest_csv", "floats.csv.gz", gzip.compress(seeds["floats.csv"].encode(), mtime=0))


def idx_pair(labels, images):
    return struct.pack(">H", len(labels)) + labels + images


def idx_files():
    labels = struct.pack(">II", 0x801, 3) + bytes([0, 7, 9])
    images = struct.pack(">IIII", 0x803, 3, 2, 2) + bytes(range(12))
    write("fuzz_ingest_idx", "tiny.bin", idx_pair(labels, images))
    write("fuzz_ingest_idx", "tiny_gzip.bin", idx_pair(gzip.compress(labels, mtime=0), gzip.compress(images, mtime=0)))
    write("fuzz_ingest_idx", "count_mismatch.bin", idx_pair(struct.pack(">II", 0x801, 2) + bytes([1, 2]), images))
    write("fuzz_ingest_idx", "truncated_images.bin", idx_pair(labels, images[:-3]))
    write("fuzz_ingest_idx", "trailing_data.bin", idx_pair(labels + b"\x00", images))
    write("fuzz_ingest_idx", "swapped.bin", idx_pair(images, labels))
    write("fuzz_ingest_idx", "zero_dim.bin", idx_pair(labels, struct.pack(">IIII", 0x803, 3, 0, 2)))
    real = pathlib.Path("/usr/share/datasets/fashion-mnist")
    if real.is_dir():
        with gzip.open(real / "t10k-labels-idx1-ubyte.gz") as f:
            f.read(8)
            real_labels = struct.pack(">II", 0x801, 2) + f.read(2)
        with gzip.open(real / "t10k-images-idx3-ubyte.gz") as f:
            f.read(16)
            real_images = struct.pack(">IIII", 0x803, 2, 28, 28) + f.read(2 * 784)
        write("fuzz_ingest_idx", "fashion_2.bin", idx_pair(real_labels, real_images))


def job_configs():
    for example in sorted((ROOT / "launch" / "examples").glob("*.yaml")):
        shutil.copy(example, HERE / "corpus" / "fuzz_job_config" / example.name)
    seeds = {
        "minimal.yaml": "dataset: d.h5\nbackbone: b.h5\n",
        "unknown_key.yaml": "dataset: d.h5\nbackbone: b.h5\ns3t:\n  shard: 2\n",
        "wrong_type.yaml": "dataset: d.h5\nbackbone: b.h5\ns3t:\n  shards: two\n",
        "not_mapping.yaml": "- a\n- b\n",
        "bad_yaml.yaml": "dataset: [d.h5\n",
        "noisy_gd.yaml": ("dataset: d.h5\nbackbone: b.h5\ns3t:\n  enabled: false\nnoisy_gd:\n  steps: 10\n"
                          "  target_epsilon: 1.0\n  delta: 0.00001\n"),
        "anchors.yaml": "base: &b {shards: 2}\ndataset: d.h5\nbackbone: b.h5\ns3t: *b\n",
    }
    for name, text in seeds.items():
        write("fuzz_job_config", name, text)


if __name__ == "__main__":
    (HERE / "corpus" / "fuzz_job_config").mkdir(parents=True, exist_ok=True)
    deletion_requests()
    http_requests()
    csv_files()
    idx_files()
    job_configs()

#!/usr/bin/env python3
"""tests/docs: runs the commands the documentation gives, as written, on a tiny dataset.

1. Every `lethe SUBCOMMAND` named in README.md and docs/*.md exists: `lethe SUB --help` exits 0 and
   prints SUB's own usage line.
2. Every config in launch/examples/ passes `lethe validate` (exit 0, JSON {"valid": true}), in a
   scratch copy of the repository whose data/ holds small stand-ins for the files the configs name
   (28x28 CSV records for Fashion-MNIST), each backbone made by `lethe pretrain` as the headers say
   (byo_backbone.yaml: exported with --out, then installed with --import). A `device: cuda` config
   is validated as written where torch sees a GPU, and otherwise must fail with the CUDA message
   and pass with `device: cpu`.
3. launch/slurm/*.sbatch pass `bash -n` (and shellcheck where installed); the systemd unit passes
   `systemd-analyze verify` (where installed) with the binary path pointed at the build.
4. launch/examples/csv_small.yaml end to end: the commands of its header comment, literally.
5. docs/OPERATIONS.md: every code block marked `<!-- docs-test: NAME -->`, literally, in the
   order ORDER below (backup, delete, audit, status, restore, retrain), with checks of what they produced.
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORDER = ["backup", "delete", "ledger-copy", "audit", "audit-dataset", "status", "restore", "retrain"]
failures = []


def fail(what):
    failures.append(what)
    print(f"FAIL: {what}", flush=True)


def run(cmd, cwd, env, shell=False, check=True):
    result = subprocess.run(cmd, cwd=cwd, env=env, shell=shell, executable="/bin/bash" if shell else None,
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        shown = cmd if isinstance(cmd, str) else " ".join(map(str, cmd))
        raise RuntimeError(f"`{shown}` exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def write_csv(path, records, seed, prefix, side, classes):
    """`classes` classes of side x side uint8 images; class c brightens its own band of rows."""
    rng = random.Random(seed)
    band = max(1, side // classes)
    with open(path, "w") as out:
        out.write("id,user,label," + ",".join(f"f{i}" for i in range(side * side)) + "\n")
        for r in range(records):
            label = r % classes
            pixels = [rng.randint(0, 90) + (150 if (k // side) // band == label else 0) for k in range(side * side)]
            out.write(f"{prefix}{r:05d},user-{r % 40},{label}," + ",".join(map(str, pixels)) + "\n")


def subcommands_named_in_docs(source):
    names = set()
    for doc in [source / "README.md", *sorted((source / "docs").glob("*.md"))]:
        text = doc.read_text()
        # Code only: fenced blocks, indented lines and `inline spans` (prose says "the lethe binary").
        code = re.findall(r"```.*?```", text, re.S) + re.findall(r"^(?: {4}|\t).*$", text, re.M)
        code += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for segment in code:
            segment = re.sub(r"(^|\s)#.*$", "", segment, flags=re.M)  # shell comments are prose
            for match in re.finditer(r"\blethe ([a-z][a-z-]+)", segment):
                names.add((match.group(1), doc.name))
    return names


def check_help(lethe, source, env):
    known = {}
    for name, doc in sorted(subcommands_named_in_docs(source)):
        known.setdefault(name, []).append(doc)
    for name, docs in sorted(known.items()):
        result = run([lethe, name, "--help"], None, env, check=False)
        if result.returncode != 0 or not re.search(rf"Usage: \S*lethe {re.escape(name)}\b", result.stdout):
            fail(f"`lethe {name}` (named in {', '.join(sorted(set(docs)))}) has no --help of its own "
                 f"(exit {result.returncode}): {result.stdout[:200]!r} {result.stderr[:200]!r}")
    print(f"help: {len(known)} subcommands named in the docs: {', '.join(sorted(known))}", flush=True)


def header_commands(config):
    """The `build/lethe ...` and `mpirun ...` lines of a config's header comment."""
    commands = []
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("build/lethe ") or text.startswith("mpirun "):
            commands.append(text)
    return commands


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lethe", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    lethe = str(Path(args.lethe).resolve())
    source = Path(args.source).resolve()
    start = time.monotonic()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", LC_ALL="C")

    check_help(lethe, source, env)

    # 3. Scripts and units.
    for script in sorted((source / "launch/slurm").glob("*.sbatch")):
        result = run(["bash", "-n", str(script)], None, env, check=False)
        if result.returncode != 0:
            fail(f"bash -n {script.name}: {result.stderr}")
        if shutil.which("shellcheck"):
            result = run(["shellcheck", "-x", str(script)], None, env, check=False)
            if result.returncode != 0:
                fail(f"shellcheck {script.name}:\n{result.stdout}")
    work = Path(tempfile.mkdtemp(prefix="lethe_docs_"))
    try:
        unit = source / "launch/systemd/lethe-serve.service"
        if shutil.which("systemd-analyze"):
            local_unit = work / unit.name
            local_unit.write_text(unit.read_text().replace("/opt/lethe/build/lethe", lethe))
            result = run(["systemd-analyze", "verify", str(local_unit)], None, env, check=False)
            if result.returncode != 0 or result.stderr.strip():
                fail(f"systemd-analyze verify {unit.name}: {result.stdout}{result.stderr}")
        run_docs(lethe, source, work, env)
    finally:
        if args.keep:
            print(f"scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"docs test: {time.monotonic() - start:.1f} s, {len(failures)} failure(s)")
    return 1 if failures else 0


def run_docs(lethe, source, work, env):
    # A scratch repository root: launch/ (examples, ops), build/lethe, data/.
    shutil.copytree(source / "launch/examples", work / "launch/examples")
    shutil.copytree(source / "launch/ops", work / "launch/ops")
    (work / "build").mkdir()
    (work / "build/lethe").symlink_to(lethe)
    data = work / "data"
    data.mkdir()

    # 4. csv_small.yaml, its header literally (records.csv as its header describes it).
    write_csv(data / "records.csv", 300, 1, "rec-", 6, 3)
    write_csv(data / "records-test.csv", 150, 2, "test-", 6, 3)
    csv_commands = header_commands(work / "launch/examples/csv_small.yaml")
    if len(csv_commands) < 5:
        fail(f"csv_small.yaml's header gives {len(csv_commands)} commands, expected ingest, validate, pretrain, train, eval")
    for command in csv_commands:
        result = run(command, work, env, shell=True)
        if command.startswith("build/lethe eval"):
            accuracy = json.loads(result.stdout)["accuracy"]
            if not accuracy > 0.9:
                fail(f"csv_small: `{command}` gives accuracy {accuracy}, expected > 0.9 on separable classes")
    print(f"csv_small.yaml: {len(csv_commands)} header commands ran", flush=True)

    # 2. Every example passes `lethe validate`, with stand-in data where it names Fashion-MNIST.
    write_csv(work / "fashion.csv", 600, 3, "fm-", 28, 10)
    ingest = ["build/lethe", "ingest", "--format", "csv", "--csv", "fashion.csv", "--id-column", "id", "--subject-column", "user",
              "--feature-type", "uint8", "--feature-shape", "28x28", "--seed", "1"]
    run(ingest + ["--public-fraction", "0.1", "--out", "data/fashion-train.h5"], work, env)
    run(ingest + ["--out", "data/fashion-test.h5"], work, env)
    for config in sorted((work / "launch/examples").glob("*.yaml")):
        text = config.read_text()
        cuda = re.search(r"^device:\s*cuda\b", text, re.M) is not None
        cpu_config = config
        if cuda:
            cpu_config = config.with_name(config.stem + ".cpu-check.yaml")
            cpu_config.write_text(re.sub(r"^device:\s*cuda\b", "device: cpu", text, flags=re.M))
        backbone = re.search(r"^backbone:\s*(\S+)", text, re.M).group(1)
        if not (config.parent / backbone).resolve().exists():
            if config.name == "byo_backbone.yaml":  # its header: export elsewhere, then --import
                run(["build/lethe", "pretrain", "--config", str(cpu_config.relative_to(work)), "--out", "exported.h5"], work, env)
                run(["build/lethe", "pretrain", "--config", str(cpu_config.relative_to(work)), "--import", "exported.h5"], work, env)
            else:
                run(["build/lethe", "pretrain", "--config", str(cpu_config.relative_to(work))], work, env)
        result = run(["build/lethe", "validate", "--config", str(config.relative_to(work))], work, env, check=False)
        if cuda and result.returncode != 0 and "sees no CUDA device" in result.stderr:
            result = run(["build/lethe", "validate", "--config", str(cpu_config.relative_to(work))], work, env, check=False)
        try:
            valid = result.returncode == 0 and json.loads(result.stdout).get("valid") is True
        except json.JSONDecodeError:
            valid = False
        if not valid:
            fail(f"lethe validate --config launch/examples/{config.name}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        if cpu_config != config:
            cpu_config.unlink()
    print("examples validated", flush=True)

    # 5. docs/OPERATIONS.md's marked blocks, in ORDER.
    blocks = {}
    for match in re.finditer(r"<!-- docs-test: ([a-z-]+) -->\n```sh\n(.*?)```", (source / "docs/OPERATIONS.md").read_text(), re.S):
        blocks[match.group(1)] = match.group(2)
    if sorted(blocks) != sorted(ORDER):
        fail(f"docs/OPERATIONS.md marks blocks {sorted(blocks)}; this test runs {sorted(ORDER)}: update ORDER")
    outputs = {}
    for name in ORDER:
        if name not in blocks:
            continue
        result = run("set -euo pipefail\n" + blocks[name], work, env, shell=True, check=False)
        outputs[name] = result.stdout
        if result.returncode != 0:
            fail(f"OPERATIONS.md block '{name}' exited {result.returncode}:\n{blocks[name]}\n{result.stdout}\n{result.stderr}")
            return
    ids = (work / "ids.txt").read_text().split()
    receipt = json.loads((work / "receipt.json").read_text())
    if len(ids) != 3 or receipt["status"] != "completed" or [r["outcome"] for r in receipt["records"]] != ["deleted"] * 3:
        fail(f"delete: expected 3 deleted records in a completed receipt, got ids {ids} and {json.dumps(receipt)[:400]}")
    audit = outputs["audit"].split()
    if len(audit) != 4 or audit[0] != receipt["id"] or audit[1:3] != ["completed", "deleted"]:
        fail(f"audit printed {outputs['audit']!r}, expected '{receipt['id']} completed deleted <ms>'")
    if outputs["audit-dataset"].splitlines()[0] != "1":
        fail(f"audit-dataset: the id should be listed once among all ids: {outputs['audit-dataset'][:200]!r}")
    status = json.loads(outputs["status"])
    if status["deletions"]["completed"] < 1 or status["deletions"]["last_batch"]["records_deleted"] != 3 or \
            receipt["id"] not in status["deletions"]["last_batch"]["requests"]:
        fail(f"status: expected the delete block's request as the last completed batch of 3 records: {outputs['status'][:400]}")
    redo = (work / "redo.txt").read_text().split()
    if sorted(redo) != sorted(ids):
        fail(f"restore: deleted_ids.py found {redo}, expected the ids deleted after the backup {ids}")
    live = run(["build/lethe", "inspect", "data/records-train.h5", "--ids", "live"], work, env).stdout.split()
    if set(ids) & set(live):
        fail(f"restore: deleted records are live again after the replay: {set(ids) & set(live)}")
    retrain, _ = json.JSONDecoder().raw_decode(outputs["retrain"])
    if retrain.get("retrained") is not True:
        fail(f"retrain after the replayed deletions should restore sequences: {outputs['retrain'][:300]}")
    print(f"OPERATIONS.md: {len(ORDER)} blocks ran", flush=True)


if __name__ == "__main__":
    sys.exit(main())

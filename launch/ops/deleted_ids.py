#!/usr/bin/env python3
"""Which live records of a restored dataset were deleted after its backup was taken.

A backup of a job holds the bytes of every record that was live when it was taken. Before a restored
job serves again, every deletion acknowledged since must be carried out on it again
(docs/OPERATIONS.md, "Restoring a backup"). The newest ledger knows those deletions only as salted
hashes (docs/LEDGER.md); this script hashes every live id of the restored dataset with that ledger's
salt and prints, one per line, the ids that a completed request deleted (outcome deleted or
already_erased) or that a still unfinished request names, ready for
`lethe delete --job DIR --records-file FILE`. Unfinished subject requests are listed on stderr with
the command that repeats them.

    python3 launch/ops/deleted_ids.py --ledger NEWEST/ledger.sqlite --data RESTORED.h5 > redo.txt
"""
import argparse
import hashlib
import json
import sqlite3
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", required=True, help="the newest ledger (a copy: it is opened read-only)")
    parser.add_argument("--data", required=True, help="the restored dataset file (manifest.json's dataset)")
    parser.add_argument("--lethe", default="build/lethe", help="the lethe binary (default: build/lethe)")
    args = parser.parse_args()

    db = sqlite3.connect(f"file:{args.ledger}?mode=ro", uri=True)
    salt_row = db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
    if salt_row is None:
        sys.exit(f"deleted_ids: {args.ledger} has no salt: not a Lethe ledger")
    salt = bytes(salt_row[0])
    deleted = set()
    for (receipt,) in db.execute("SELECT receipt FROM requests WHERE status = 'completed' AND receipt IS NOT NULL"):
        for record in json.loads(receipt).get("records", []):
            if record.get("outcome") in ("deleted", "already_erased"):
                deleted.add(record["id_hash"])
    pending = set()
    for (record_id,) in db.execute(
        "SELECT r.record_id FROM request_records r JOIN requests q ON q.seq = r.request_seq "
        "WHERE q.status IN ('queued', 'applied') AND r.record_id IS NOT NULL"
    ):
        pending.add(record_id)
    for (subject,) in db.execute("SELECT subject FROM requests WHERE status IN ('queued', 'applied') AND subject IS NOT NULL"):
        print(f"deleted_ids: unfinished subject request: lethe delete --job DIR --subject {subject}", file=sys.stderr)

    live = subprocess.run([args.lethe, "--log-level", "warn", "inspect", args.data, "--ids", "live"],
                          check=True, capture_output=True, text=True).stdout.splitlines()
    found = 0
    for record_id in live:
        if record_id in pending or hashlib.sha256(salt + record_id.encode()).hexdigest() in deleted:
            print(record_id)
            found += 1
    print(f"deleted_ids: {found} of {len(live)} live records were deleted after this backup", file=sys.stderr)


if __name__ == "__main__":
    main()

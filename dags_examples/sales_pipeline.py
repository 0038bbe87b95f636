"""Example pipeline: land raw sales files, clean and enrich them file by file, aggregate.

    landing (a directory the pipeline only reads)
      -> wait_for_landing  DirectoryChangeSensor: commits a snapshot when files change
      -> clean             per-file: normalise each CSV (lower case, no blanks, no comments)
      -> enrich            per-file: add a ``total = qty * price`` column
      -> aggregate         whole: totals per category over every file

The commands are plain POSIX ``sh`` and ``awk``, so they run unchanged with the
local runner and in a busybox container on Kubernetes. A file whose raw change
only touches comments or blanks is cleaned to identical bytes: ``enrich`` and
``aggregate`` then skip it (early cutoff).

Settings come from the environment so that tests and the demo can relocate it:
``DATAFLOW_DEMO_ROOT`` (default ``demo-data/`` in the checkout),
``DATAFLOW_EXAMPLE_BATCH_SIZE`` and ``DATAFLOW_EXAMPLE_FAN_OUT``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param

from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.operators.dataflow import dataflow_task
from airflow_dataflow.sensors.change import DirectoryChangeSensor

ROOT = os.environ.get("DATAFLOW_DEMO_ROOT") or str(Path(__file__).resolve().parent.parent / "demo-data")
BATCH_SIZE = int(os.environ.get("DATAFLOW_EXAMPLE_BATCH_SIZE", "50"))
FAN_OUT = os.environ.get("DATAFLOW_EXAMPLE_FAN_OUT", "0") == "1"
IMAGE = os.environ.get("DATAFLOW_EXAMPLE_IMAGE", "localhost/dataflow-task:dev")

landing = DirectoryDataset("sales_landing", f"file://{ROOT}/landing", owned=False)
clean_ds = DirectoryDataset("sales_clean", f"file://{ROOT}/{{env}}/clean")
enriched_ds = DirectoryDataset("sales_enriched", f"file://{ROOT}/{{env}}/enriched")
summary_ds = DirectoryDataset("sales_summary", f"file://{ROOT}/{{env}}/summary")

# Each script reads the file list, writes one output per input at the same path.
CLEAN = r"""
set -eu
while IFS= read -r f; do
  mkdir -p "$DATAFLOW_OUTPUT_DIR/$(dirname "$f")"
  awk '!/^#/ && NF { gsub(/[ \t\r]/, ""); print tolower($0) }' "$DATAFLOW_INPUT_DIR/$f" > "$DATAFLOW_OUTPUT_DIR/$f"
done < "$DATAFLOW_FILES"
"""

ENRICH = r"""
set -eu
while IFS= read -r f; do
  mkdir -p "$DATAFLOW_OUTPUT_DIR/$(dirname "$f")"
  awk -F, -v OFS=, 'NR == 1 { print $0, "total"; next } { printf "%s,%s,%s,%s,%.2f\n", $1, $2, $3, $4, $3 * $4 }' \
    "$DATAFLOW_INPUT_DIR/$f" > "$DATAFLOW_OUTPUT_DIR/$f"
done < "$DATAFLOW_FILES"
"""

AGGREGATE = r"""
set -eu
find "$DATAFLOW_INPUT_DIR" -type f -name '*.csv' | sort | while IFS= read -r f; do tail -n +2 "$f"; done \
  | awk -F, '{ total[$2] += $5; n[$2] += 1 } END { for (c in total) printf "%s,%d,%.2f\n", c, n[c], total[c] }' \
  | sort > "$DATAFLOW_OUTPUT_DIR/by_category.csv"
"""

with DAG(
    dag_id="sales_pipeline",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["dataflow", "example"],
    doc_md=__doc__,
    params={"wait_for_change": Param(True, type="boolean", description="wait for a change of the landing files")},
) as dag:
    wait = DirectoryChangeSensor(
        task_id="wait_for_landing",
        dataset=landing,
        wait="{{ params.wait_for_change }}",
        poke_interval=5,
        timeout=60,
        mode="reschedule",
    )
    clean = dataflow_task(
        "clean",
        fan_out=FAN_OUT,
        command=["sh", "-c", CLEAN],
        image=IMAGE,
        inputs={"raw": landing},
        output=clean_ds,
        mode="per_file",
        batch_size=BATCH_SIZE,
    )
    enrich = dataflow_task(
        "enrich",
        fan_out=FAN_OUT,
        command=["sh", "-c", ENRICH],
        image=IMAGE,
        inputs={"clean": clean_ds},
        output=enriched_ds,
        mode="per_file",
        batch_size=BATCH_SIZE,
    )
    aggregate = dataflow_task(
        "aggregate",
        command=["sh", "-c", AGGREGATE],
        image=IMAGE,
        inputs={"enriched": enriched_ds},
        output=summary_ds,
        mode="whole",
    )
    wait >> clean >> enrich >> aggregate

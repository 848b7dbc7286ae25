"""Where a validate or infer job's results are, under its job directory, on the node that
writes them and in the gateway's storage that serves them."""

from __future__ import annotations

RESULTS_DIR = "results"
JSONL_FILE = "predictions.jsonl"  # an infer job's rows
PARQUET_FILE = "predictions.parquet"
SUMMARY_FILE = "summary.json"  # an infer job's summary
VALIDATION_FILE = "validation.json"  # a validate job's scores

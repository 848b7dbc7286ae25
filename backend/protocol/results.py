"""Where a validate or infer job's results are, under its job directory, on the node that
writes them and in the gateway's storage that serves them."""

from __future__ import annotations

RESULTS_DIR = "results"
JSONL_FILE = "predictions.jsonl"  # an infer job's rows
PARQUET_FILE = "predictions.parquet"
SUMMARY_FILE = "summary.json"  # an infer job's summary
VALIDATION_FILE = "validation.json"  # a validate job's scores
# Figures of a run's data flow beside a validate job's scores: they say how the run went,
# not what the model scored, and differ from run to run.
FLOW_FIGURES = frozenset(
    {
        "batches_in_flight",
        "data_wait_fraction",
        "in_flight_mb",
        "loader_cpu_utilisation",
        "samples_per_s",
        "trainer_gpu_utilisation",
        "estimated_memory_mb",
    }
)

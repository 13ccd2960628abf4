"""tests/benchmark.py runs: one step of every method and a small eval.py column, on the CPU,
so that the benchmark the README quotes cannot break silently."""
import json
import math

import benchmark


def test_one_step_of_every_method_and_an_eval_column(weights, tmp_path):
    out = tmp_path / "bench.json"
    benchmark.main(["--device", "cpu", "--small", "--steps", "1", "--warmup", "0",
                    "--eval-samples", "4", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [r["method"] for r in result["train"]] == list(benchmark.METHODS)
    for row in result["train"]:
        assert row["mode"] == "fp32" and math.isfinite(row["loss"]), row
        assert all(row[f"{p}_ms"] > 0 for p in benchmark.PHASES), row
        assert row["images_per_sec"] > 0 and row["protocol_hours"] > 0
    assert result["eval"]["samples"] == 4 and result["eval"]["column_seconds"] > 0

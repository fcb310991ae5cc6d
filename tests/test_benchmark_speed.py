"""benchmarks/pruned_training_speed.py on a tiny batch: the table, the JSON and the rounded widths."""
import importlib.util
import json
import os

import hf_metaprune as hm

BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "pruned_training_speed.py")


def test_pruned_training_speed_writes_every_network_and_setting(tmp_path):
    spec = importlib.util.spec_from_file_location("pruned_training_speed", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "speed.json"
    summary = module.main(["--round_to", "0", "8", "--batch_size", "4", "--repetitions", "1", "--output", str(output)])
    written = json.loads(output.read_text())
    assert written["table"] == summary["table"] and written["versions"] == hm.library_versions()
    assert [r["network"] for r in written["rows"]] == ["base", "pruned", "pruned, round_to=8"]
    for row in written["rows"]:
        assert set(row["images_per_second"]) == {"fp32 NCHW", "fp32 channels-last", "bf16 NCHW", "bf16 channels-last"}
        assert all(v > 0 for v in row["images_per_second"].values())
    base, pruned, rounded = written["rows"]
    assert base["speed_up"] == 1.0 and abs(pruned["speed_up"] - 2.0) < 0.1 and abs(rounded["speed_up"] - 2.0) < 0.1
    assert max(base["conv_widths"]) == 64 and all(w % 8 == 0 for w in rounded["conv_widths"])
    assert any(w % 8 for w in pruned["conv_widths"])  # group-L2 pruning alone leaves odd widths
    assert summary["table"].count("\n") == 4 and "(1.00×)" in summary["table"]

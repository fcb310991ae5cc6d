"""Every transformer family the README lists as supported is traced exactly, pruned head-aware to 1.5x and 2x and
reloads in a new process with identical logits; the rest is refused naming the module (the sweep of
benchmarks/transformers_sweep.py, which writes the README's table)."""
import importlib.util
import os
import sys

import pytest

SWEEP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                     "transformers_sweep.py")
REFUSED = {  # model: module named in the error
    "BEiT, shared relative position bias": "beit.shared_position_bias",  # one table for every layer's heads
    "GPT-2": "transformer.h.0.attn",  # q/k/v fused in a Conv1D
    "MPNet": "mpnet.encoder.relative_attention_bias",  # a per-head bias embedding shared by every layer
}
PRUNING_ONLY = {  # pruned head-aware, but the graph adapter (the metanetwork's input) refuses them: (module, why)
    # relative position embeddings projected by the attention's own key / query projections
    "DeBERTa-v3 (relative, shared keys)": ("deberta.encoder.rel_embeddings", "could not trace")}


@pytest.fixture(scope="module")
def rows():
    spec = importlib.util.spec_from_file_location("transformers_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["transformers_sweep"] = module
    spec.loader.exec_module(module)
    yield {r["model"]: r for r in module.sweep()}, module
    del sys.modules["transformers_sweep"]


def test_every_supported_family_round_trips_prunes_and_reloads_in_a_new_process(rows):
    rows, sweep = rows
    assert set(rows) == set(sweep.CASES)
    for name, r in rows.items():
        if name in REFUSED:
            continue
        if name in PRUNING_ONLY:
            module, why = PRUNING_ONLY[name]
            assert r["status"] == "pruning only" and r["graph_module"] == module, (name, r.get("reason"))
            assert why in r["graph_reason"], name
        else:
            assert r["status"] == "supported", (name, r.get("reason"), r.get("graph_reason"))
            assert r["round_trip"] and r["coverage"], name
        for target in (1.5, 2.0):
            achieved, note = r[f"speed_up_{target:g}x"], r[f"note_{target:g}x"]
            assert achieved >= target and (achieved <= target * 1.01 or "closest above" in note), name
        if r["heads"]:  # pruned logits = the unpruned model with the removed heads and neurons zeroed
            assert r["heads_2x"] <= r["heads"], name
            assert r["masked_reference_max_diff_1.5x"] < 1e-5 and r["masked_reference_max_diff_2x"] < 1e-5, name
        assert r["reload_identical"], (name, r.get("reload_error"))
        if r["library"] == "🤗":
            assert r["pruned_class"].startswith("MetaPruned") and r["auto_map"], name
    assert rows["ViT"]["heads_2x"] < rows["ViT"]["heads"]  # heads do go, not only MLP neurons
    for name in ("vit_tiny_patch16_224", "Swin", "swin_tiny_patch4_window7_224", "Phi"):  # fused qkv;
        # per-head tables; grouped-query attention (a key/value group is 2 query heads)
        assert rows[name]["heads_2x"] < rows[name]["heads"], name


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_families_are_refused_naming_the_module(rows, name):
    r = rows[0][name]
    assert r["status"] == "refused" and r["module"] == REFUSED[name]
    assert REFUSED[name] in r["reason"]

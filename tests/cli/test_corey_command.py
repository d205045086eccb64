"""``corey`` run as a subprocess, as a user runs it: dump a preset, a config file, a saved model; --out,
--pass, --decode, COREY_DEBUG_DIR; and every bad input answered with one line and exit status 2."""
import json
import os
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from corey_compile.passes import PIPELINE

COREY = pathlib.Path(sys.executable).with_name("corey")
PASSES = [p.name for p in PIPELINE]
FAST = ["--seq-len", "5", "--option", "inner_compiler=eager"]


def corey(*args, env=None, cwd=None):
    assert COREY.exists(), f"the corey command is not installed beside {sys.executable}"
    environment = {k: v for k, v in os.environ.items() if k != "COREY_DEBUG_DIR"}
    environment.update(env or {})
    return subprocess.run([str(COREY), *map(str, args)], capture_output=True, text=True, env=environment, cwd=cwd,
                          timeout=600)


def tiny_config(layers=3):
    from transformers import MambaConfig

    return MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=layers, state_size=4, intermediate_size=64,
                       time_step_rank=2)


def test_dump_a_preset_as_one_json_document():
    done = corey("dump", "tiny", "--format", "json", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)  # nothing but the document on stdout
    (graph,) = document["graphs"]
    assert document["pipeline"] == PASSES and [p["name"] for p in graph["passes"]] == PASSES
    assert [r["layer"] for r in graph["regions"]] == ["backbone.layers.0.mixer", "backbone.layers.1.mixer"]
    for region in graph["regions"]:
        assert region["form"] == "F4 known function" and region["shape"]["seqlen"] == 5
        assert region["chunk_size"] == 16 and region["launch"]["grid"] == [8, 1] and region["reasons"]
    assert graph["kernels"][0]["kernel"] == "selective_scan_fwd" and len(graph["kernels"][0]["launches"]) == 2
    assert "[" in done.stderr and "pass lower_regions" in done.stderr  # progress goes to stderr


def test_dump_a_config_file_explains_in_order(tmp_path):
    path = tmp_path / "mamba.json"
    tiny_config(layers=3).to_json_file(path)
    done = corey("dump", path, *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    marks = ["pipeline:", "options:", "passes:", "regions:", "kernels:", "timings (s):"]
    positions = [text.index(mark) for mark in marks]
    assert positions == sorted(positions), positions
    assert all(f"scan{i}" in text for i in range(3)) and "scan3" not in text
    assert "backbone.layers.2.mixer" in text and "created by lower_regions:" in text


def test_dump_a_saved_model_directory(tmp_path):
    from transformers import MambaForCausalLM

    torch.manual_seed(0)
    MambaForCausalLM(tiny_config(layers=2)).save_pretrained(tmp_path, safe_serialization=True)
    assert list(tmp_path.glob("*.safetensors"))
    done = corey("dump", tmp_path, "--format", "json", "--dtype", "bfloat16", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    (graph,) = json.loads(done.stdout)["graphs"]
    assert len(graph["regions"]) == 2 and {r["dtype"] for r in graph["regions"]} == {"bfloat16"}


def _check_debug_folder(folder: pathlib.Path, passes=PASSES, length="5"):
    stems = ["00_input"] + [f"{i:02d}_{name}" for i, name in enumerate(passes, start=1)]
    for stem in stems:
        assert "def forward" in (folder / f"{stem}.py").read_text()
        svg = ET.parse(folder / f"{stem}.svg").getroot()
        assert svg.tag.endswith("svg")
    lowered = (folder / f"{stems[1 + passes.index('lower_regions')]}.svg").read_text()
    assert re.search(rf"corey::selective_scan float32\[1,128,{length}\] \(created\)", lowered)  # marked
    assert "(erased)" in lowered
    matcher = stems[1 + next(i for i, name in enumerate(passes) if name.startswith("match_"))]
    assert "(created)" not in (folder / f"{matcher}.svg").read_text()  # a matcher creates nothing
    assert "def _selective_scan_fwd_kernel" in (folder / "kernels" / "selective_scan_fwd.py").read_text()
    report = json.loads((folder / "report.json").read_text())
    assert len(report["regions"]) == 2 and [p["name"] for p in report["passes"]] == passes


def test_out_writes_code_pictures_kernels_and_the_report(tmp_path):
    done = corey("dump", "tiny", "--out", tmp_path / "dump", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    _check_debug_folder(tmp_path / "dump" / "graph_000")
    assert str(tmp_path / "dump") in done.stdout


def test_debug_dir_variable_makes_torch_compile_write_the_same_folder(tmp_path):
    script = (
        "import torch\n"
        "from corey_compile.models import build_mamba\n"
        "m = build_mamba('tiny', use_associative_scan=False)\n"
        "with torch.no_grad():\n"
        "    torch.compile(m, backend='corey', options={'inner_compiler': 'eager'})(torch.randint(1, 200, (1, 5)), use_cache=False)\n")
    env = {k: v for k, v in os.environ.items()}
    env["COREY_DEBUG_DIR"] = str(tmp_path / "debug")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    _check_debug_folder(tmp_path / "debug" / "graph_000", length=r"s\d+")  # torch.compile: the length symbolic


def test_pass_prints_the_graph_before_and_after_it():
    done = corey("dump", "tiny", "--pass", "lower_regions", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    before = done.stdout.index("before lower_regions:")
    after = done.stdout.index("after lower_regions:")
    assert before < after
    assert "corey.selective_scan" not in done.stdout[before:after]
    assert "corey.selective_scan" in done.stdout[after:]


def test_decode_explains_the_one_token_graph():
    import transformers

    done = corey("dump", "tiny", "--decode", "--format", "json", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    graphs = json.loads(done.stdout)["graphs"]
    regions = [r for g in graphs for r in g["regions"]]
    legacy = tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (5, 3)
    assert len(regions) == 2 and {r["shape"]["seqlen"] for r in regions} == {1}
    assert {r["form"] for r in regions} == {"F1 unrolled recurrence" if legacy else "F3 state update"}


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "llama.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (tmp_path / "a_file").write_text("")
    (tmp_path / "no_weights").mkdir()
    tiny_config().to_json_file(tmp_path / "no_weights" / "config.json")
    return tmp_path


@pytest.mark.parametrize("args, says", [
    (["dump", "mamba-9000"], "neither a preset (tiny, 130m"),
    (["dump", "{tmp}/missing.json"], "neither a preset"),
    (["dump", "{tmp}/broken.json"], "not a readable JSON config"),
    (["dump", "{tmp}/llama.json"], "not a Mamba model (model_type 'llama')"),
    (["dump", "{tmp}/no_weights"], "no *.safetensors weights"),
    (["dump", "tiny", "--seq-len", "0"], "--seq-len: must be 1 or more"),
    (["dump", "tiny", "--batch", "-2"], "--batch: must be 1 or more"),
    (["dump", "tiny", "--layers", "0"], "--layers: must be 1 or more"),
    (["dump", "tiny", "--option", "chunk=32"], "unknown corey option 'chunk'"),
    (["dump", "tiny", "--option", "chunk_size=24"], "must be a power of two"),
    (["dump", "tiny", "--option", "fusion"], "is not KEY=VALUE"),
    (["dump", "tiny", "--pass", "fuse_everything"], "not a pass of this pipeline"),
    (["dump", "tiny", "--option", "match_forms=F2", "--pass", "match_unrolled_recurrence"], "not a pass of this pipeline"),
    (["dump", "tiny", "--out", "{tmp}/a_file/dump"], "--out {tmp}/a_file/dump: cannot write there"),
    (["dump", "tiny", "--format", "yaml"], "invalid choice: 'yaml'"),
    (["explain", "tiny"], "invalid choice: 'explain'"),
])
def test_bad_input_gets_one_line_and_exit_status_2(bad_files, args, says):
    done = corey(*[a.replace("{tmp}", str(bad_files)) for a in args])
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("corey: error: "), done.stderr
    assert says.replace("{tmp}", str(bad_files)) in lines[0]
    assert done.stdout == ""


def test_help_says_what_everything_does():
    top = corey("--help")
    assert top.returncode == 0 and "demo" in top.stdout and "dump" in top.stdout
    dump = corey("dump", "--help")
    for word in ("MODEL", "--seq-len", "--batch", "--dtype", "--device", "--decode", "--option", "--pass", "--format",
                 "--out", "COREY_DEBUG_DIR", "chunk_policy", "fusion"):
        assert word in dump.stdout, word


def test_dump_plans_at_its_length_unless_asked_for_the_symbolic_one():
    done = corey("dump", "tiny", "--option", "symbolic_length=true", "--format", "json", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    (graph,) = json.loads(done.stdout)["graphs"]
    assert graph["length_marked"] and all(isinstance(r["shape"]["seqlen"], str) for r in graph["regions"])
    text = corey("dump", "tiny", *FAST)
    assert text.returncode == 0 and "the prompt length is static here: corey dump plans at seq-len 5" in text.stdout

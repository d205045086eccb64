"""``backend="corey"`` in a fresh process that never imported corey_compile, exactly as a new user types it.

Runs on whichever transformers is importable (``make test`` runs this folder on the
newest release and on one before 5.3).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import transformers

LEGACY = tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (5, 3)
# Before 5.3 a forward without a cache builds one inside the compiled graph, and Dynamo (torch 2.13)
# refuses that cache's mark_static_address whatever the backend, eager included; so there the call
# passes use_cache=False.
CALL_KWARGS = ", use_cache=False" if LEGACY else ""

USER_LINES = {
    "torch.compile": 'torch.compile(m, backend="corey")(torch.randint(0, 97, (1, 7)){kwargs})',
    "module.compile": 'm.compile(backend="corey")\nm(torch.randint(0, 97, (1, 7)){kwargs})',
}


@pytest.mark.parametrize("spelling", list(USER_LINES))
def test_backend_name_works_in_a_fresh_process(spelling):
    script = textwrap.dedent("""
        import torch
        from transformers import MambaConfig, MambaForCausalLM
        m = MambaForCausalLM(MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=4)).eval()
        {user_lines}
        """).format(user_lines=USER_LINES[spelling].format(kwargs=CALL_KWARGS))
    # Only after the user's lines: proof that corey, and not another backend, compiled the graph.
    check = textwrap.dedent("""
        import sys
        loaded_before = "corey_compile" in sys.modules
        import corey_compile
        print("corey loaded by the entry point:", loaded_before, "graphs:", len(corey_compile.all_reports()))
        """)
    env = {k: v for k, v in os.environ.items() if k != "COREY_DEBUG_DIR"}
    done = subprocess.run([sys.executable, "-c", script + check], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "corey loaded by the entry point: True graphs: " in done.stdout
    assert int(done.stdout.split("graphs:")[1]) >= 1

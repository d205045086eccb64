"""Test set-up: Triton kernels run in Triton's interpreter on the CPU (set before anything imports triton),
and every compilation checks the pass contract after each pass."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("COREY_CHECK_INVARIANTS", "1")  # every compilation in the tests checks the pass contract

import pytest  # noqa: E402
import torch  # noqa: E402

import corey_compile  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    corey_compile.clear_reports()
    yield
    torch._dynamo.reset()

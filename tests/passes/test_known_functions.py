"""Stand-ins for known library functions, on mamba-ssm's contract.

mamba-ssm cannot be imported without its CUDA extension, so these tests put a module of their own at
mamba-ssm's path, ``mamba_ssm.ops.selective_scan_interface``, holding a ``selective_scan_ref`` written
here with mamba-ssm's signature and semantics (tests/scan_forms.py's reference spelling). corey
recognizes a function by its module, name and parameters, so it treats it as it treats mamba-ssm's.
"""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import corey_compile
from corey_compile import known_functions
from tests.helpers import scan_inputs

MODULE = "mamba_ssm.ops.selective_scan_interface"
SITE = MODULE + ".selective_scan_ref"
EAGER = {"inner_compiler": "eager", "strict": True}


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 2:  # time-invariant B and C: (d, n)
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B.float(), u)
    else:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B.float(), u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,dn->bd", x, C.float()) if C.dim() == 2
                  else torch.einsum("bdn,bn->bd", x, C[:, :, i].float()))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


@pytest.fixture(scope="module")
def interface():
    """Our module at mamba-ssm's path, with corey's stand-in installed for its function."""
    names = ["mamba_ssm", "mamba_ssm.ops", MODULE]
    saved = {name: sys.modules.get(name) for name in names}
    module = types.ModuleType(MODULE)
    module.selective_scan_ref = selective_scan_ref
    for name in names[:-1]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[MODULE] = module
    installed = known_functions.install()
    assert SITE in installed
    yield module
    for name, previous in saved.items():
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous


def _call(module):
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return module.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, True)

    return fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mamba_ssm_reference_becomes_one_planned_scan(interface, dtype):
    fn = _call(interface)
    compiled = torch.compile(fn, backend="corey", options=EAGER)
    for seqlen in (9, 13, 17):
        inputs = scan_inputs(l=seqlen, dtype=dtype)
        (out, last), (ref, ref_last) = compiled(**inputs), fn(**inputs)
        tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
        assert out.dtype == ref.dtype == dtype
        torch.testing.assert_close(out, ref, **tolerance)
        torch.testing.assert_close(last, ref_last, rtol=1e-5, atol=1e-5)
    reports = corey_compile.all_reports()
    (report,) = reports  # corey made the length symbolic at the first call: one graph serves the three lengths
    # u, delta, B, C and z carry the length (the function's own arguments); A, D and the bias do not
    assert sorted(report.length_marked) == sorted(f"L['{name}'] dim 2" for name in ("u", "delta", "B", "C", "z"))
    for report in reports:
        assert report.known_calls == {SITE: ["one call"]}
        (region,) = report.regions
        assert region.form == "F4 known function" and region.absorbed == ["delta_bias", "softplus", "D", "z"]


def test_the_known_call_leaves_nothing_behind_once_lowered(interface, monkeypatch):
    # F4's unplanned_scan becomes a planned selective_scan; the call it replaces must leave the graph (an unused
    # op still runs where the inner compiler does not remove dead code, as the eager one does not)
    from corey_compile import backend

    graphs = []
    real = backend._inner_compile
    monkeypatch.setattr(backend, "_inner_compile", lambda gm, *rest: (graphs.append(gm), real(gm, *rest))[1])
    fn = _call(interface)
    torch.compile(fn, backend="corey", options=EAGER)(**scan_inputs(l=9))
    (gm,) = graphs
    called = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert any("selective_scan" in str(t) for t in called)
    assert not any("unplanned_scan" in str(t) for t in called)


def test_time_invariant_B_and_C_are_traced_as_written(interface):
    fn = _call(interface)
    inputs = scan_inputs(l=5)
    inputs["B"], inputs["C"] = torch.randn(6, 4), torch.randn(6, 4)  # (d, n): mamba-ssm allows it, the kernel does not
    (out, _), (ref, _) = torch.compile(fn, backend="corey", options=EAGER)(**inputs), fn(**inputs)
    torch.testing.assert_close(out, ref)
    (report,) = corey_compile.all_reports()
    assert report.known_calls == {SITE: ["traced as written: B and C are not input-dependent (b, n, l)"]}
    assert not any(r.form == "F4 known function" for r in report.regions)


def test_a_function_behind_a_hub_wrapper_module_is_the_one_stood_in_for():
    # transformers 5.25 with the kernels package: the module-level name is an nn.Module instance whose forward
    # calls a functools.wraps wrapper, which calls the library's own function when no hub kernel replaces it
    import functools

    def library_scan(u):
        return u

    @functools.wraps(library_scan)
    def func(*args, **kwargs):
        return library_scan(*args, **kwargs)

    class Func(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return func(*args, **kwargs)

    assert known_functions._library_function(Func()) is library_scan
    assert known_functions._library_function(library_scan) is library_scan
    assert known_functions._library_function(torch.nn.Linear(2, 2)) is None  # a module that wraps no function
    assert known_functions._library_function(None) is None


def test_inductor_workers_start_while_dynamo_traces_the_first_known_call(interface, monkeypatch):
    # Inductor compiles in its worker pool only once the pool is up: corey starts it at the first known call,
    # while Dynamo still traces, before the backend gets the graph (recorded here in the order it happens).
    from corey_compile import backend
    from corey_compile.options import resolve_options

    events = []

    def start(options, when):
        events.append(when)
        return ""

    monkeypatch.setattr(backend, "start_inductor_workers", start)
    monkeypatch.setattr(backend, "resolve_options",
                        lambda options: events.append("backend") or resolve_options(options))
    fn = _call(interface)
    torch.compile(fn, backend="corey", options=EAGER)(**scan_inputs(l=5))
    # twice at the first known call: Dynamo traces it again once corey has made the length symbolic
    first = "at the first known call Dynamo traced"
    assert events == [first, first, "backend", "when the backend was called"]


def test_inductor_workers_start_once_on_a_cuda_machine_with_inductor(monkeypatch):
    import torch._inductor.async_compile as async_compile

    from corey_compile import backend
    from corey_compile.options import resolve_options

    started = []
    monkeypatch.setattr(async_compile, "maybe_warm_pool", lambda: started.append(True))
    monkeypatch.setitem(backend._INDUCTOR_WORKERS, "started", "")
    inductor, eager = resolve_options({}), resolve_options({"inner_compiler": "eager"})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend.start_inductor_workers(inductor, "first") == "" and not started  # no GPU: Inductor's CPU code
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend.start_inductor_workers(eager, "first") == "" and not started  # nothing of Inductor's runs
    assert backend.start_inductor_workers(inductor, "first") == "first" and started == [True]
    assert backend.start_inductor_workers(inductor, "second") == "" and started == [True]  # once per process
    assert backend._INDUCTOR_WORKERS["started"] == "first"

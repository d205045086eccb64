"""Which scan form transformers' Mamba hands Dynamo on this machine, and whether corey matches it (diagnostic).

Prints the implementation transformers resolved for its selective scan, the graph breaks Dynamo
reports, and the scan-related targets in each graph corey receives.
"""
import inspect

import torch
import transformers
from transformers.models.mamba import modeling_mamba as mm

import corey_compile
from corey_compile.models import build_mamba

print("transformers", transformers.__version__, "torch", torch.__version__)
scan_fn = mm.mamba_selective_scan
print("mamba_selective_scan:", scan_fn, "module:", getattr(scan_fn, "__module__", None))
print("wrapped source head:", inspect.getsource(scan_fn)[:300].replace("\n", " | "))
model = build_mamba("tiny", num_hidden_layers=2, device="cuda")
print("config.use_associative_scan =", getattr(model.config, "use_associative_scan", None),
      "mixer:", getattr(model.backbone.layers[0].mixer, "use_associative_scan", None))
torch._logging.set_logs(graph_breaks=True)
seen = []


def spy(gm, example_inputs):
    targets = {str(n.target) for n in gm.graph.nodes}
    seen.append(sorted(t for t in targets if "associative" in t or "scan" in t or "stack" in t))
    return corey_compile.corey_backend(gm, example_inputs, options={"strict": True})


prompt = torch.randint(1, 200, (2, 63), device="cuda")
with torch.no_grad():
    ref = model(prompt).logits
    out = torch.compile(model, backend=spy)(prompt).logits
print("targets seen per graph:", seen)
report = corey_compile.last_report()
print("max diff", (out - ref).abs().max().item(), "regions", [(r.form, r.chunk_size) for r in report.regions],
      "declined", report.declined)


@torch.compile(backend="eager", fullgraph=True)
def dynamo_flags(x):
    return x + (1 if mm.is_torchdynamo_compiling() else 0) + (10 if mm.is_torchdynamo_exporting() else 0)


print("compiling + 10*exporting, as Dynamo sees them:", dynamo_flags(torch.zeros(1, device="cuda")).item())
print("is_torch_greater_or_equal('2.9.0'):", mm.is_torch_greater_or_equal("2.9.0"))
b, d, l, n = 2, 8, 9, 4
args = [torch.randn(b, d, l, device="cuda"), torch.randn(b, d, l, device="cuda"), -torch.rand(d, n, device="cuda"),
        torch.randn(b, n, l, device="cuda"), torch.randn(b, n, l, device="cuda")]
for fullgraph in (False, True):
    seen.clear()
    try:
        fn = torch.compile(lambda *a: mm.mamba_selective_scan(*a, use_associative_scan=True), backend=spy, fullgraph=fullgraph)
        fn(*args)
        print(f"direct call, fullgraph={fullgraph}: targets", seen)
    except Exception as exc:  # noqa: BLE001 - a diagnostic: show why
        print(f"direct call, fullgraph={fullgraph}: {type(exc).__name__}: {str(exc)[:1500]}")

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

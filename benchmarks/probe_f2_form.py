"""Which scan form transformers' Mamba hands Dynamo on this machine, and whether corey matches it (diagnostic)."""
import inspect

import torch
import transformers
from transformers.models.mamba import modeling_mamba as mm

import corey_compile
from corey_compile.models import build_mamba

print("transformers", transformers.__version__, "torch", torch.__version__)
print("is_torchdynamo_compiling:", inspect.getsource(mm.is_torchdynamo_compiling)[:600])
model = build_mamba("tiny", num_hidden_layers=2, device="cuda")
print("config.use_associative_scan =", getattr(model.config, "use_associative_scan", None),
      "mixer:", getattr(model.backbone.layers[0].mixer, "use_associative_scan", None))
seen = []


def spy(gm, example_inputs):
    seen.append(sorted({str(n.target) for n in gm.graph.nodes if "associative" in str(n.target) or "stack" in str(n.target)}))
    return corey_compile.corey_backend(gm, example_inputs, options={"strict": True})


prompt = torch.randint(1, 200, (2, 63), device="cuda")
with torch.no_grad():
    ref = model(prompt).logits
    out = torch.compile(model, backend=spy)(prompt).logits
print("targets seen:", seen)
print("max diff", (out - ref).abs().max().item(), "regions", [(r.form, r.chunk_size) for r in corey_compile.last_report().regions],
      "declined", corey_compile.last_report().declined)

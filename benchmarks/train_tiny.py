"""Train a tiny Mamba on text every machine has: the Python standard library's own sources.

Usage: python benchmarks/train_tiny.py [--steps 600] [--device cpu|cuda] [--out benchmarks/models/tiny_stdlib]

Bytes are the tokens (vocabulary 256). The ``.py`` files under ``sysconfig.get_paths()["stdlib"]``
(tests and site-packages left out) are sorted by path; every tenth file is held out for evaluation
(``held_out_text``), the rest is the training text. The model is transformers' ``MambaForCausalLM``:
hidden 192 (= 12·16, so its residual stream takes a Kronecker Hadamard matrix), inner 384, state 16,
2 layers. AdamW, batches of random windows of the training text. It saves ``model.safetensors`` and
``config.json`` (about 2 MB) and ``training.json`` (the loss curve, the Python version whose library it
read, the seconds it took). Weights trained on another Python's library differ; the tests only need a
model whose statistics are a trained model's, not these exact weights.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import sysconfig
import time

import torch

CONFIG = dict(vocab_size=256, hidden_size=192, intermediate_size=384, state_size=16, num_hidden_layers=2,
              conv_kernel=4, time_step_rank=12, pad_token_id=0, bos_token_id=0, eos_token_id=0,
              tie_word_embeddings=True, use_cache=True)
OUT = pathlib.Path(__file__).resolve().parent / "models" / "tiny_stdlib"


def _sources() -> list[pathlib.Path]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not any(part in ("test", "tests", "site-packages", "idle_test") for part in p.relative_to(root).parts))


def _text(paths) -> torch.Tensor:
    data = b"\n".join(p.read_bytes() for p in paths)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def training_text() -> torch.Tensor:
    return _text([p for i, p in enumerate(_sources()) if i % 10])


def held_out_text() -> torch.Tensor:
    return _text([p for i, p in enumerate(_sources()) if i % 10 == 0])


def training_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                  return_last_state=False, **_):
    """The selective scan of transformers' ``mamba_selective_scan`` loop, for training.

    The same recurrence, in float32, stepping over time slices taken apart once (``unbind``): the
    library's loop indexes the full (b, d, l, n) tensors at every step, and autograd writes a
    full-size gradient for each index, which made one training step take 50 s on a CPU.
    """
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[..., None]
    if delta_softplus:
        dt = torch.nn.functional.softplus(dt)
    decay = torch.exp(A[None, :, None, :] * dt[..., None])  # (b, d, l, n)
    drive = dt[..., None] * B.transpose(1, 2)[:, None].float() * hidden_states[..., None].float()
    state = hidden_states.new_zeros(hidden_states.shape[0], hidden_states.shape[1], A.shape[-1], dtype=torch.float32)
    outputs = []
    for decay_t, drive_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.float().unbind(2)):
        state = decay_t * state + drive_t
        outputs.append((state * c_t[:, None, :]).sum(-1))
    out = torch.stack(outputs, dim=-1).to(hidden_states.dtype)
    if D is not None:
        out = out + hidden_states * D[None, :, None]
    if z is not None:
        out = out * torch.nn.functional.silu(z)
    return (out, state) if return_last_state else out


def load(path: str | os.PathLike = OUT, dtype=torch.float32, device="cpu"):
    """The trained model saved at ``path``, in eval mode."""
    from transformers import MambaConfig, MambaForCausalLM

    from safetensors.torch import load_file

    path = pathlib.Path(path)
    model = MambaForCausalLM(MambaConfig(**json.loads((path / "config.json").read_text())))
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the LM head is tied to the embedding
        raise ValueError(f"{path}: not this model's weights (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    from safetensors.torch import save_file
    from transformers import MambaConfig, MambaForCausalLM

    import transformers.models.mamba.modeling_mamba as modeling

    if hasattr(modeling, "mamba_selective_scan"):  # transformers 5.15 and later; earlier ones train their own loop
        modeling.mamba_selective_scan = training_scan
    torch.manual_seed(0)
    text = training_text()
    model = MambaForCausalLM(MambaConfig(**CONFIG, use_associative_scan=False)).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
    generator = torch.Generator().manual_seed(0)
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        offsets = torch.randint(0, text.numel() - args.seqlen - 1, (args.batch,), generator=generator)
        batch = torch.stack([text[o:o + args.seqlen] for o in offsets.tolist()]).to(args.device)
        loss = model(batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(round(loss.item(), 4))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")
    (out / "training.json").write_text(json.dumps({
        "python": sys.version.split()[0], "stdlib": sysconfig.get_paths()["stdlib"], "training_bytes": text.numel(),
        "steps": args.steps, "batch": args.batch, "seqlen": args.seqlen, "lr": args.lr, "device": args.device,
        "seconds": round(time.perf_counter() - start, 1), "loss_every_step": losses}, indent=1) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()

"""The ``corey`` command.

  corey demo   compile a small random-weight Mamba with corey, compare it with eager, show what corey did
  corey dump   compile a model once and explain every stage: passes, regions, plans, declines, kernels, timings

Nothing is downloaded: models come from presets with the real shapes of the
mamba-130m … 2.8b checkpoints, from a transformers config JSON, or from a
directory a model was saved to (weights in safetensors). Bad input gets one
line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import warnings

from .report import chunk_text

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


class Progress:
    """Progress lines on stderr, each with the seconds since the command started."""

    def __init__(self, quiet: bool = False):
        self.start, self.quiet = time.perf_counter(), quiet

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {text}", file=sys.stderr, flush=True)


def _versions() -> dict:
    import torch
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__}


def _legacy_transformers() -> bool:
    """transformers before 5.3: a forward without a cache builds one inside the compiled graph (refused by Dynamo)."""
    import transformers

    return tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (5, 3)


# ----------------------------------------------------------------------------- models


def resolve_model(spec: str) -> tuple[str, object]:
    """MODEL as written -> ("preset", name) | ("config", dict) | ("saved", directory). UsageError when it is none."""
    from .models import PRESETS

    if spec in PRESETS:
        return "preset", spec
    path = pathlib.Path(spec)
    if not path.exists():
        raise UsageError(f"MODEL {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file or directory")
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise UsageError(f"{spec}: a model directory must hold config.json (from save_pretrained)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{config_file}: not a readable JSON config ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict) or config.get("model_type") != "mamba":
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise UsageError(f"{config_file}: not a Mamba model (model_type {found!r}); corey dump reads model_type 'mamba'")
    if path.is_dir():
        if not list(path.glob("*.safetensors")):
            raise UsageError(f"{spec}: no *.safetensors weights (corey loads saved weights with safetensors, never pickle)")
        return "saved", path
    return "config", config


def build_model(kind: str, value, layers: int | None, dtype: str, device: str):
    import torch

    from .models import build_mamba

    torch_dtype = getattr(torch, dtype)
    # On the CPU, transformers >= 5.3 traces its associative scan in a generic (vmap) form corey does
    # not match; the Python-loop form is the one it lowers there.
    assoc = None if device == "cuda" else False
    if kind == "preset":
        return build_mamba(value, num_hidden_layers=layers, use_associative_scan=assoc, device=device, dtype=torch_dtype)
    from transformers import MambaConfig, MambaForCausalLM

    if kind == "config":
        config = MambaConfig(**{k: v for k, v in value.items() if k not in ("model_type", "architectures")})
        if layers:
            config.num_hidden_layers = layers
        if assoc is not None:
            config.use_associative_scan = assoc
        torch.manual_seed(0)
        return MambaForCausalLM(config).to(device=device, dtype=torch_dtype).eval()
    if layers:
        raise UsageError("--layers cannot change a saved model; leave it out")
    extra = {} if assoc is None else {"use_associative_scan": assoc}
    model = MambaForCausalLM.from_pretrained(value, use_safetensors=True, local_files_only=True, **extra)
    return model.to(device=device, dtype=torch_dtype).eval()


def _cache_keyword(model) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "cache_params"


def run_model(model, prompt, decode: bool):
    """Call the model as corey should see it: the prompt without a cache, or (decode) one token after a cached prompt.

    For ``decode`` the prompt runs first on the model's own eager forward, so only the
    one-token graph reaches the compiler.
    """
    import inspect

    import torch

    with torch.no_grad():
        if not decode:
            return model(prompt, use_cache=False)
        eager = model._orig_mod if hasattr(model, "_orig_mod") else model
        out = eager(prompt, use_cache=True)
        keyword = _cache_keyword(eager)
        cache = getattr(out, "cache", None) or getattr(out, "cache_params", None)
        kwargs = {keyword: cache, "use_cache": True}
        if "cache_position" in inspect.signature(eager.forward).parameters:
            kwargs["cache_position"] = torch.tensor([prompt.shape[1]], device=prompt.device)
        next_token = out.logits[:, -1:].argmax(-1)
        return model(next_token, **kwargs)


# ----------------------------------------------------------------------------- demo


def demo(args) -> int:
    import torch
    from tabulate import tabulate

    import corey_compile

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"corey {corey_compile.__version__} · " + " · ".join(f"{k} {v}" for k, v in _versions().items()))
    print(f"building a random-weight Mamba (preset {args.preset}), prompt {args.batch}x{args.seq_len}, "
          f"{args.new_tokens} greedy tokens; nothing is downloaded")
    model = build_model("preset", args.preset, args.layers, args.dtype, device)
    vocab = model.config.vocab_size
    prompt = torch.randint(1, vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(1)).to(device)
    generate = dict(max_new_tokens=args.new_tokens, do_sample=False, attention_mask=torch.ones_like(prompt))
    legacy = dict(use_cache=False) if _legacy_transformers() else {}
    with torch.no_grad():
        eager_logits = model(prompt, **legacy).logits
        eager_tokens = model.generate(prompt, **generate)
    corey_compile.clear_reports()
    model.compile(backend="corey", options={"inner_compiler": args.inner})
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(prompt, **legacy).logits
        compile_seconds = time.perf_counter() - start
        tokens = model.generate(prompt, **generate)
    reports = corey_compile.all_reports()
    for report in reports:
        ops = {r.op for r in report.regions}
        kind = "prefill" if "corey::selective_scan" in ops and not all(r.shape["seqlen"] == 1 for r in report.regions) \
            else "decode" if ops else "graph"
        print(f"\n{kind} graph #{report.graph_index}: {report.nodes_before} → {report.nodes_after} nodes, "
              f"inner compiler {report.inner_compiler}")
        if report.shared_layers:
            print(f"layers handed to the inner compiler: {report.shared_layers}")
        print(report.table())
    diff = (logits.float() - eager_logits.float()).abs().max().item()
    same = bool((tokens == eager_tokens).all())
    print()
    print(tabulate([
        ["device", device],
        ["matched regions", sum(len(r.regions) for r in reports)],
        ["declined", sum(len(r.declined) for r in reports)],
        ["first compile + run", f"{compile_seconds:.1f} s"],
        ["max |logit - eager|", f"{diff:.2e}"],
        ["greedy tokens identical", "yes" if same else "NO"],
    ], tablefmt="simple_outline"))
    print("\n`corey dump tiny` explains each stage; `corey dump tiny --out DIR` writes the graphs and kernels.")
    return 0 if same else 1


# ----------------------------------------------------------------------------- dump


def _check_out_dir(out: str) -> pathlib.Path:
    path = pathlib.Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".corey-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return path


def _options(assignments: list) -> dict:
    from .options import parse_option_text, resolve_options

    chosen = {}
    for assignment in assignments:
        try:
            name, value = parse_option_text(assignment)
        except ValueError as exc:
            raise UsageError(f"--option {assignment}: {exc}") from None
        chosen[name] = value
    try:
        resolve_options(chosen)
    except ValueError as exc:  # an environment variable, say
        raise UsageError(str(exc)) from None
    return chosen


def _graph_document(report, pass_name: str | None) -> dict:
    document = {
        "graph": report.graph_index, "nodes_before": report.nodes_before, "nodes_after": report.nodes_after,
        "inner_compiler": report.inner_compiler, "fell_back": report.fell_back, "fallback_reason": report.fallback_reason,
        "passes": [vars(p) for p in report.passes], "regions": [vars(r) for r in report.regions],
        "declined": [vars(d) for d in report.declined], "kernels": _kernels(report), "seconds": report.seconds,
        "symbolic": report.symbolic, "length_marked": report.length_marked,
        "recompile_reason": report.recompile_reason,
    }
    if pass_name and report.debug_dir:
        document["pass_code"] = _pass_code(report, pass_name)
    return document


def _kernels(report) -> list:
    kernels: dict = {}
    for region in report.regions:
        kernels.setdefault(region.kernel, []).append({"region": region.name, "launch": region.launch})
    return [{"kernel": name, "launches": launches} for name, launches in kernels.items()]


def _pass_code(report, pass_name: str) -> dict:
    """The graph's code before and after ``pass_name``, from the recorded stages."""
    files = sorted(pathlib.Path(report.debug_dir).glob("[0-9][0-9]_*.py"))
    index = next((i for i, f in enumerate(files) if f.stem[3:] == pass_name), None)
    if index is None:  # the pipeline stopped before it (a pass failed, or the graph was declined whole)
        missing = f"# not recorded: the pipeline did not reach {pass_name} for this graph\n"
        return {"pass": pass_name, "before": missing, "after": missing}
    return {"pass": pass_name, "before": files[index - 1].read_text(), "after": files[index].read_text()}


def _text_report(header: dict, reports: list, pass_name: str | None) -> str:
    from tabulate import tabulate

    lines = [f"corey dump · {header['model']} · batch {header['batch']} · seq-len {header['seq_len']} · "
             f"{header['dtype']} · {header['device']}" + (" · decode step" if header["decode"] else ""),
             " · ".join(f"{k} {v}" for k, v in header["versions"].items()), "",
             "pipeline: " + " → ".join(header["pipeline"]),
             "options: " + ", ".join(f"{k}={v}" for k, v in header["options"].items())]
    if not header["options"].get("symbolic_length", True) and not header["decode"]:
        lines.append(f"the prompt length is static here: corey dump plans at seq-len {header['seq_len']} "
                     "(torch.compile with corey makes it symbolic from the first call; --option "
                     "symbolic_length=true shows that)")
    for report in reports:
        lines += ["", f"== graph {report.graph_index}: {report.nodes_before} → {report.nodes_after} nodes, "
                      f"inner compiler {report.inner_compiler}" + (" (fell back)" if report.fell_back else "")]
        symbolic = sorted({s for symbols in report.symbolic.values() for s in symbols})
        lines.append("sizes: " + (f"symbolic ({', '.join(symbolic)}): one graph serves them all" if symbolic
                                  else "static: a new length or batch compiles again"))
        if report.length_marked:
            lines.append("the sequence length made symbolic at the first call (option symbolic_length): "
                         + ", ".join(report.length_marked))
        if report.recompile_reason:
            lines.append(f"compiled again because: {report.recompile_reason}")
        if report.cuda_graphs:
            lines.append(f"CUDA graphs: {report.cuda_graphs}")
        if report.shared_layers:
            lines.append(f"layers handed to the inner compiler: {report.shared_layers}")
        if report.known_calls:
            rows = [[site, len(calls), "; ".join(sorted(set(calls)))] for site, calls in report.known_calls.items()]
            lines += ["", "known functions traced:", tabulate(rows, headers=["function", "calls", "became"])]
        rows = [[p.name, p.nodes_before, p.nodes_after, p.created, p.erased, f"{p.seconds:.3f}",
                 "\n".join(p.decisions[:6] + ([f"… {len(p.decisions) - 6} more"] if len(p.decisions) > 6 else []))]
                for p in report.passes]
        lines += ["", "passes:", tabulate(rows, headers=["pass", "nodes in", "nodes out", "created", "erased", "s",
                                                          "decisions"])]
        for p in report.passes:
            if p.created_nodes:
                shown = ", ".join(p.created_nodes[:12]) + (f", … {len(p.created_nodes) - 12} more"
                                                           if len(p.created_nodes) > 12 else "")
                lines.append(f"  created by {p.name}: {shown}")
        if report.regions:
            rows = [[r.name, r.layer or "-", r.form, "x".join(str(r.shape[k]) for k in ("batch", "dim", "seqlen", "dstate")),
                     r.dtype, chunk_text(r.chunk_size), _launch_text(r.launch), ",".join(r.absorbed) or "-", "\n".join(r.reasons)]
                    for r in report.regions]
            lines += ["", "regions:", tabulate(rows, headers=["region", "layer", "form", "b×d×l×n", "dtype", "chunk",
                                                              "launch", "absorbed", "why"])]
            measured = [r for r in report.regions if r.measurements]
            if measured:
                rows = [[r.name, role, m["numel"], m["nonfinite"], f"{m.get('min', float('nan')):.4g}",
                         f"{m.get('max', float('nan')):.4g}", f"{m.get('rms', float('nan')):.4g}",
                         f"{m.get('entropy', float('nan')):.3f}", f"{m.get('entropy_ratio', float('nan')):.3f}"]
                        for r in measured for role, m in r.measurements.items()]
                lines += ["", "measured on the example inputs:", tabulate(
                    rows, headers=["region", "operand", "values", "non-finite", "min", "max", "rms", "H (nats)",
                                   "H / log K"])]
        else:
            lines += ["", "regions: none"]
        if report.hadamard_metrics:
            lines += ["", "Hadamard rotation, measured on the example inputs (before → after):",
                      _hadamard_table(report.hadamard_metrics)]
        if report.declined:
            lines += ["", "declined:", tabulate([[d.what, d.pass_name, d.reason] for d in report.declined],
                                                headers=["what", "pass", "why"])]
        if report.fell_back:
            lines += ["", f"fell back to the model's own graph: {report.fallback_reason}"]
        kernels = _kernels(report)
        if kernels:
            lines += ["", "kernels:"]
            for kernel in kernels:
                launches = {json.dumps(k["launch"], sort_keys=True) for k in kernel["launches"]}
                lines.append(f"  {kernel['kernel']}: {len(kernel['launches'])} launch(es), "
                             f"{len(launches)} distinct: " + "; ".join(_launch_text(json.loads(x)) for x in sorted(launches)))
        times = ([["Dynamo (trace, until corey got the graph)", f"{report.seconds['dynamo']:.3f}"]]
                 if "dynamo" in report.seconds else []) + [[p.name, f"{p.seconds:.3f}"] for p in report.passes] + [
            ["all passes" + (", with recording" if "recording" in report.seconds else ""),
             f"{report.seconds.get('passes', 0):.3f}"]] + (
            [["  of which recording for --out", f"{report.seconds['recording']:.3f}"]] if "recording" in report.seconds
            else []) + [[f"inner compiler ({report.inner_compiler})", f"{report.seconds.get('inner_compiler', 0):.3f}"]]
        lines += ["", "timings (s):", tabulate(times, tablefmt="plain")]
        if report.inductor_workers:
            lines.append(f"Inductor's compile workers, started by corey: {report.inductor_workers}")
        if pass_name and report.debug_dir:
            code = _pass_code(report, pass_name)
            lines += ["", f"-- graph {report.graph_index} before {pass_name}:", code["before"],
                      f"-- graph {report.graph_index} after {pass_name}:", code["after"]]
    lines += ["", f"total: {header['seconds']['total']:.1f} s (Dynamo tracing, corey, inner compiler and the run)"]
    if header.get("out"):
        lines.append(f"written: {header['out']} (one folder per graph: code and a picture after every pass, "
                     "kernels, report.json)")
    return "\n".join(lines)


def _hadamard_table(records: list) -> str:
    from tabulate import tabulate

    def pair(record, key, output=False, digits=3):
        before, after = (record[side]["output"] if output else record[side] for side in ("before", "after"))
        return f"{before[key]:.{digits}g} → {after[key]:.{digits}g}"

    rows = [[r["activation"], r["width"], pair(r, "max_over_rms"), pair(r, "kurtosis"), pair(r, "entropy_ratio"),
             pair(r, "int8_token_error"), pair(r, "int4_token_error"), pair(r, "int8_token_error", output=True),
             pair(r, "int4_token_error", output=True)] for r in records]
    return tabulate(rows, headers=["activation", "width", "max/RMS", "kurtosis", "H / log K", "int8/token error",
                                   "int4/token error", "output error, int8", "output error, int4"])


def _launch_text(launch: dict) -> str:
    keys = ("grid", "block_d", "num_warps", "stages", "pipeline", "steps_per_load")
    return " ".join(f"{k}={tuple(launch[k]) if k == 'grid' else launch[k]}" for k in keys if k in launch)


def dump(args) -> int:
    progress = Progress()
    kind, value = resolve_model(args.model)
    # corey dump explains the plan at --seq-len: the length stays static unless asked (torch.compile's graphs
    # make it symbolic from the first call, which --option symbolic_length=true shows)
    chosen = {"symbolic_length": False, **_options(args.option)}
    out = _check_out_dir(args.out) if args.out else None
    from .options import resolve_options
    from .passes import pipeline_for

    names = [p.name for p in pipeline_for(resolve_options(chosen))]
    if args.pass_name and args.pass_name not in names:
        raise UsageError(f"--pass {args.pass_name}: not a pass of this pipeline; the passes are {', '.join(names)}")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible")

    import corey_compile
    from corey_compile.backend import set_progress

    scratch = None
    if args.pass_name and out is None:
        scratch = tempfile.TemporaryDirectory(prefix="corey-dump-")
    debug_dir = out or (pathlib.Path(scratch.name) if scratch else None)
    if debug_dir is not None:
        chosen = {**chosen, "debug_dir": str(debug_dir)}
    progress(f"building {args.model} ({args.dtype}, {device})")
    try:
        model = build_model(kind, value, args.layers, args.dtype, device)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{args.model}: cannot build the model ({type(exc).__name__}: {exc})") from None
    vocab = model.config.vocab_size
    prompt = torch.randint(1, vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    corey_compile.clear_reports()
    compiled = torch.compile(model, backend="corey", options=chosen)
    from . import known_functions

    # transformers' scan reaches corey as one call where its stand-in is installed and F4 is on; else the
    # library's loop over time is unrolled
    known = any(site.startswith("transformers.models.mamba.") for site in known_functions.install())
    forms = resolve_options(chosen).match_forms
    progress("Dynamo traces the model" + ("" if known and "F4" in forms
                                          else " (a Python loop over time is unrolled: long prompts take a while)"))
    set_progress(progress)
    start = time.perf_counter()
    try:
        run_model(compiled, prompt, args.decode)
    finally:
        set_progress(None)
    reports = corey_compile.all_reports()
    header = {"model": args.model, "batch": args.batch, "seq_len": args.seq_len, "dtype": args.dtype, "device": device,
              "decode": args.decode, "versions": {"corey": corey_compile.__version__, **_versions()},
              "options": {k: v for k, v in resolve_options(chosen).__dict__.items() if k != "debug_dir"},
              "pipeline": names, "seconds": {"total": round(time.perf_counter() - start, 3)},
              "out": str(out) if out else None}
    if args.format == "json":
        document = {**header, "graphs": [_graph_document(r, args.pass_name) for r in reports]}
        print(json.dumps(document, indent=2, default=str))
    else:
        print(_text_report(header, reports, args.pass_name))
    if scratch is not None:
        scratch.cleanup()
    return 0


# ----------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    from .models import PRESETS

    parser = _Parser(prog="corey", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,dump}")
    presets = ", ".join(PRESETS)

    def common(p, default_seq_len, default_batch):
        p.add_argument("--seq-len", dest="seq_len", type=_positive_int, default=default_seq_len,
                       help=f"prompt length (default {default_seq_len})")
        p.add_argument("--batch", type=_positive_int, default=default_batch, help=f"prompts (default {default_batch})")
        p.add_argument("--layers", type=_positive_int, default=None,
                       help="keep this many layers of a preset or config (default: all of them)")
        p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="the model's dtype (default float32, what a transformers model has unless cast)")
        p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when one is visible")

    p = sub.add_parser("demo", help="compile a small random-weight Mamba and compare it with eager",
                       description="Compile a random-weight Mamba with corey, compare logits and greedy tokens with "
                                   "eager, and show what corey matched and decided.")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model shapes (default tiny)")
    common(p, 63, 2)
    p.add_argument("--new-tokens", type=_positive_int, default=16, help="greedy tokens to generate (default 16)")
    p.add_argument("--inner", default="inductor", choices=["inductor", "eager"],
                   help="compiler for the rest of the graph (default inductor)")
    p.set_defaults(fn=demo)

    from .options import OPTIONS

    option_help = "; ".join(f"{o.name} ({o.describe()})" for o in OPTIONS if o.name != "debug_dir")
    p = sub.add_parser(
        "dump", help="compile a model once and explain every stage",
        description="Compile MODEL once with corey and explain it: the pass pipeline and the options in force, what "
                    "each pass did, the regions with their plans, what was declined and why, the kernels and their "
                    "launches, and the time of each stage. It runs no eager comparison and no generation.",
        epilog=f"MODEL is a preset ({presets}), a transformers config JSON file (model_type mamba; random weights), "
               "or a directory saved with save_pretrained (config.json and safetensors weights). "
               "COREY_DEBUG_DIR=DIR makes any torch.compile(..., backend='corey') write what --out writes.")
    p.add_argument("model", metavar="MODEL", help="a preset, a config JSON file or a saved model directory")
    common(p, 64, 1)
    p.add_argument("--decode", action="store_true",
                   help="explain the one-token decode graph (the prompt runs eagerly first to fill the cache)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a corey option, repeatable: {option_help}")
    p.add_argument("--pass", dest="pass_name", metavar="NAME", default=None,
                   help="also print each graph's code before and after this pass")
    p.add_argument("--format", default="text", choices=["text", "json"],
                   help="text (default) or one JSON document on stdout")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write per graph: its code and an SVG picture after every pass (created and erased nodes "
                        "marked), the Triton source of each kernel, and report.json")
    p.set_defaults(fn=dump)
    return parser


def main(argv=None) -> int:
    parser = _parser()
    warnings.filterwarnings("ignore", message=".*lru_cache.*")  # Dynamo on transformers' helpers: not the user's concern
    try:
        args = parser.parse_args(argv)
        return args.fn(args)
    except UsageError as exc:
        print(f"corey: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""``corey_backend``: the function ``torch.compile(model, backend="corey")`` calls for each Dynamo graph."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import operator
import pathlib
import time
import warnings
from typing import Callable

import torch
import torch.fx as fx

from . import known_functions
from .codegen.warmup import start_warmup
from .options import resolve_options
from .passes import CompileContext, PassError, pipeline_for, run_pipeline
from .passes.graph_reading import meta_value, written_by
from .passes.share_layers import schemas_once, share_layers
from .report import CompileReport

_REPORTS: list[CompileReport] = []
_MAX_REPORTS = 64
_GRAPH_IDS = itertools.count()
_progress: Callable[[str], None] | None = None


def last_report() -> CompileReport | None:
    """What the most recent corey compilation did (None before the first)."""
    return _REPORTS[-1] if _REPORTS else None


def all_reports() -> list[CompileReport]:
    """Reports of the recent compilations, oldest first (one per Dynamo graph)."""
    return list(_REPORTS)


def clear_reports() -> None:
    _REPORTS.clear()


def set_progress(callback: Callable[[str], None] | None) -> None:
    """Have every compilation say what it is doing through ``callback`` (the CLI prints it); None stops it."""
    global _progress
    _progress = callback


def _say(text: str) -> None:
    if _progress is not None:
        _progress(text)


def _remember(report: CompileReport) -> None:
    _REPORTS.append(report)
    del _REPORTS[:-_MAX_REPORTS]


def _device_of(example_inputs) -> torch.device:
    return next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))


def _requires_grad(example_inputs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs)


# What Dynamo leaves on the graph module for the compilers after it: AOT autograd reads them to tell
# parameters and fixed-address inputs from the others (which CUDA graphs must not copy) and to map
# inputs back to their sources.
_DYNAMO_MODULE_ATTRIBUTES = ("_param_name_to_source", "_source_to_user_stacks", "_backend_id")


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy whose graph the passes may rewrite; the original stays intact for the fallback.

    It keeps what Dynamo recorded beside the graph: the module's meta and attributes
    (``_DYNAMO_MODULE_ATTRIBUTES``) and each input's source."""
    graph = fx.Graph()
    copies: dict = {}
    output = graph.graph_copy(gm.graph, copies)
    graph.output(output)
    copy = fx.GraphModule(gm, graph)
    copy.meta = dict(gm.meta)
    for name in _DYNAMO_MODULE_ATTRIBUTES:
        if hasattr(gm, name):
            setattr(copy, name, getattr(gm, name))
    for node, new in copies.items():
        if hasattr(node, "_dynamo_source"):
            new._dynamo_source = node._dynamo_source
    return copy


def _symbols(value) -> list:
    """The free symbols of a placeholder's value: a SymInt's, or those in a tensor's shape."""
    sizes = [value] if isinstance(value, torch.SymInt) else list(value.shape) if isinstance(value, torch.Tensor) else []
    return sorted({str(size) for size in sizes if isinstance(size, torch.SymInt) and size.node.maybe_as_int() is None})


def record_dynamo_facts(gm: fx.GraphModule, report: CompileReport) -> None:
    """What Dynamo knows of the compilation this graph belongs to: its id, how long tracing took, which
    inputs have symbolic sizes, and why the frame was compiled again. Read from Dynamo's internals
    where they are; a torch without them leaves the fields empty."""
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            symbols = _symbols(meta_value(node))
            if symbols:
                report.symbolic[node.name] = symbols
    try:
        report.compile_id = str(torch._guards.CompileContext.current_compile_id() or "")
        from torch._dynamo.utils import get_metrics_context

        metrics = get_metrics_context()
        if metrics.in_progress():
            reason = metrics._metrics.get("recompile_reason") or ""
            report.recompile_reason = " ".join(reason.split("#")[0].split())  # the guard, without Dynamo's source note
            start = getattr(metrics, "_start_time_ns", 0)
            if start:
                report.seconds["dynamo"] = round((time.time_ns() - start) / 1e9, 4)
    except Exception:  # noqa: BLE001 - Dynamo's internals moved: the report goes without these facts
        pass


@functools.lru_cache(maxsize=1)
def corey_cache_key() -> str:
    """A digest of corey's op and kernel sources: what Inductor's graph cache must also key on."""
    codegen = pathlib.Path(__file__).parent / "codegen"
    digest = hashlib.sha256()
    for path in sorted(codegen.rglob("*.py")):
        digest.update(path.relative_to(codegen).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _cache_key_pass():
    """A post-grad pass that changes nothing and whose uuid is ``corey_cache_key()``.

    Inductor's FX graph cache keys on the graph and the ops' names, not on a custom op's fake
    kernel or implementation: an entry made by an older corey would replay that corey's strides.
    A custom pass's uuid is part of the key, so this one makes corey's sources part of it.
    """
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class CoreyCacheKey(CustomGraphPass):
        def __call__(self, graph) -> None:
            return None

        def uuid(self) -> str:
            return corey_cache_key()

    return CoreyCacheKey()


# torch.compile's modes (``torch._inductor.list_mode_options``) and whether each captures CUDA graphs.
MODES = {"default": False, "reduce-overhead": True, "max-autotune-no-cudagraphs": False, "max-autotune": True}


def _inner_compile(gm: fx.GraphModule, example_inputs, options, mode: str | None = None, cuda_graphs: bool = False):
    """The inner compiler on corey's rewritten graph, with ``mode``'s settings, capturing CUDA graphs
    where ``cuda_graphs``."""
    if options.inner_compiler == "eager":
        if cuda_graphs:
            from torch._dynamo.backends.cudagraphs import cudagraphs

            return cudagraphs(gm, example_inputs)
        return gm.forward
    import torch._inductor
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    patches = dict(torch._inductor.list_mode_options(mode)) if mode else {}
    patches["triton.cudagraphs"] = cuda_graphs
    if inductor_config.post_grad_custom_pre_pass is None:  # else the user's own pass keys the cache its way
        patches["post_grad_custom_pre_pass"] = _cache_key_pass()
    return compile_fx(gm, example_inputs, config_patches=patches)


# When this process's Inductor compile workers were started by corey ("" until then): once per process.
_INDUCTOR_WORKERS = {"started": ""}


def start_inductor_workers(options, when: str) -> str:
    """Start Inductor's pool of compile workers now, where the inner compiler is Inductor on a machine with a
    CUDA GPU; returns ``when`` the first time it starts them, else "".

    Inductor compiles its Triton kernels in the pool only once the pool has started, and a pool started by
    the first kernel is not ready for that graph's other kernels, which then compile one after the other in
    this process (23 kernels, 3.4 s of a 16.5 s first call, on an H100: ``probes/second_length.py``).
    torch's own Inductor backend starts the pool when it is called; corey calls Inductor's ``compile_fx``
    itself, so it starts the pool the same way, and earlier: at the first known call Dynamo traces for corey
    (``known_functions``), or else when the backend is called, before the passes. Nothing starts on a
    machine without CUDA (Inductor's CPU code does not use the pool), nor where ``TORCH_WARM_POOL=0``."""
    if _INDUCTOR_WORKERS["started"] or options.inner_compiler != "inductor" or not torch.cuda.is_available():
        return ""
    _INDUCTOR_WORKERS["started"] = when
    try:
        from torch._inductor.async_compile import maybe_warm_pool
    except ImportError:  # another torch: Inductor starts its pool at its first kernel, as before
        return ""
    try:
        maybe_warm_pool()
    except Exception as exc:  # noqa: BLE001 - a pool that cannot start: Inductor compiles in this process
        _INDUCTOR_WORKERS["started"] = f"could not start ({type(exc).__name__}: {exc})"
        return ""
    return when


def _dynamo_control_exceptions() -> tuple:
    """Exceptions by which the inner compiler asks Dynamo to trace again (with a float it could not keep
    symbolic made a constant, say): they pass through corey's fallbacks."""
    try:
        from torch._dynamo.exc import RestartAnalysis

        return (RestartAnalysis,)
    except ImportError:
        return ()


_DYNAMO_CONTROL = _dynamo_control_exceptions()


def _compile_sharing_layers(gm: fx.GraphModule, example_inputs, options, mode, cuda_graphs: bool,
                            report: CompileReport):
    """The inner compiler on ``gm`` with its identical layers shared (``passes/share_layers.py``) where
    that applies; on the graph as it is where it does not, or where sharing fails (the report says why)."""
    if not options.share_layers or options.inner_compiler != "inductor" or _requires_grad(example_inputs):
        return _inner_compile(gm, example_inputs, options, mode, cuda_graphs)
    shared_gm = copy_graph_module(gm)
    try:
        shared = share_layers(shared_gm)
    except Exception as exc:  # noqa: BLE001 - a graph the pass misreads compiles unshared
        report.decline("share_layers", f"{type(exc).__name__}: {exc}; compiled every layer", "share_layers")
        return _inner_compile(gm, example_inputs, options, mode, cuda_graphs)
    report.shared_layers = shared.summary()  # with why a layer stays inline: compiled all the same, not declined
    if not shared.shared:
        return _inner_compile(gm, example_inputs, options, mode, cuda_graphs)
    _restart_with_constant_floats(shared.float_symbols)
    try:
        with schemas_once():
            return _inner_compile(shared_gm, example_inputs, options, mode, cuda_graphs)
    except Exception as exc:  # noqa: BLE001 - this torch's inner compiler refused the shared graph
        if options.strict or isinstance(exc, _DYNAMO_CONTROL):
            raise
        first_line = (str(exc).splitlines() or [""])[0]
        report.shared_layers += f"; the inner compiler refused it ({type(exc).__name__}: {first_line}), " \
                                "so every layer was compiled"
        return _inner_compile(gm, example_inputs, options, mode, cuda_graphs)


def _restart_with_constant_floats(symbols: list) -> None:
    """Have Dynamo trace again with these float inputs as constants, now rather than after AOT autograd.

    Where Dynamo made a float an input (``dynamic=True`` does so with a norm's epsilon), ``share_layers``
    hands the shared bodies the 0-d tensor in place of its ``.item()``. Inductor's scalar pass then finds
    the float's symbol unused and has Dynamo trace the frame again with every float it could not turn
    into tensor arithmetic a constant (``TensorifyScalarRestartAnalysis``), but only after AOT autograd has
    traced the whole graph, the slowest part of the inner compiler. This asks for the same restart, the
    same way the pass does (``TensorifyState.specialize``), before any of that work, for every float input
    the graph reads (``symbols``: where the pass would have kept one as a tensor, a change of its value now
    compiles again). Nothing to do where no float was unwrapped."""
    if not symbols or None in symbols:  # a read without its symbol: leave the restart to Inductor
        return
    try:
        from torch._dynamo.exc import TensorifyScalarRestartAnalysis
        from torch._dynamo.symbolic_convert import TensorifyState
    except ImportError:  # a torch without the mechanism: Inductor restarts, or not, as it would
        return
    if all(TensorifyState.should_specialize(name) for name in symbols):
        return  # asked for already, and Dynamo traced them as inputs all the same: never ask twice
    for name in symbols:
        TensorifyState.specialize(name)
    raise TensorifyScalarRestartAnalysis


# Methods and functions that give a view of their first argument: a write to the view writes the input.
_VIEWS = {"view", "view_as", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "select", "narrow", "expand",
          "__getitem__", "getitem", "unflatten", "flatten", "movedim", "t", "split", "chunk", "unbind", "as_strided"}


def _written_placeholder(node):
    """The graph input that ``node`` is, or is a view of; None if it is neither."""
    while node is not None and node.op != "placeholder":
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if node.op not in ("call_method", "call_function") or name.split(".")[0] not in _VIEWS or not node.args:
            return None
        node = node.args[0] if isinstance(node.args[0], fx.Node) else None
    return node


_SCANS = ("selective_scan", "unplanned_scan")


def hands_scan_state_out(gm: fx.GraphModule) -> bool:
    """Whether a scan's final state leaves the graph's scans: a prefill that fills a cache.

    A CUDA graph's outputs live in its memory pool and are overwritten by its next replay, so a state
    the model keeps in its cache (read by the decode steps after it) must not be one. Such a graph
    runs uncaptured; the decode steps, which write the cache in place, are captured.
    """
    for node in gm.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "namespace", None) == "corey" \
                and getattr(node.target, "_opname", None) in _SCANS:
            for user in node.users:
                if user.target is operator.getitem and user.args[1] == 1 and user.users:
                    return True
    return False


def mark_written_inputs_static(gm: fx.GraphModule) -> list[str]:
    """Mark the graph inputs the graph writes in place as fixed-address inputs; return their names.

    The writes are ``graph_reading.written_by``'s; unlike ``graph_reading.written_inputs`` (which
    copies conservatively), only an input itself or a view of it counts: marking an input that
    changes address every call would have its graph recorded again every call.

    Inductor's CUDA graphs replay at the addresses they were recorded with, so they leave out a graph
    that writes to an input unless the input keeps its address (parameters, buffers, tensors marked
    with ``torch._dynamo.mark_static_address``). A Mamba cache's states are written in place on every
    decode step and keep their address for a whole ``generate``, but transformers creates them while
    Dynamo traces, where it does not mark them. Marked here (unguarded, as ``mark_static_address(...,
    guard=False)`` does), a new cache with new addresses has the graph recorded again rather than run
    with stale ones.
    """
    marked = []
    for node in gm.graph.nodes:
        for arg in written_by(node):
            placeholder = _written_placeholder(arg)
            if placeholder is None:
                continue
            tensor_dict = placeholder.meta.setdefault("tensor_dict", {})
            if not tensor_dict.get("_dynamo_static_input_type"):
                tensor_dict["_dynamo_static_input_type"] = "unguarded"
                marked.append(placeholder.name)
    return marked


class _CudaGraphSkips(logging.Handler):
    """Collects why the inner compiler left CUDA graphs off (what it logs to torch's "cudagraphs" artifact
    logger), for the report, while it compiles."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []
        self._logger = None

    def emit(self, record) -> None:
        self.reasons.append(record.getMessage().splitlines()[0].removesuffix(" Found from :").strip())

    def __enter__(self):
        try:
            from torch._inductor.cudagraph_utils import cudagraphs_log

            logger = cudagraphs_log
            self._logger, self._saved = logger, (logger.disabled, logger.propagate)
            if logger.disabled:  # torch's logs leave it off: on for the report only, printing nothing
                logger.disabled, logger.propagate = False, False
            logger.addHandler(self)
        except (ImportError, AttributeError):  # torch moved it: the report goes without the reason
            self._logger = None
        return self

    def __exit__(self, *exc) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger.disabled, self._logger.propagate = self._saved


def corey_backend(gm: fx.GraphModule, example_inputs, options: dict | None = None, mode: str | None = None, **kwargs):
    """Compile one Dynamo graph: match selective scans, measure, plan and lower them to ``corey::`` ops,
    and hand the rest to the inner compiler.

    Options arrive as ``torch.compile(..., options={...})`` or as keyword
    arguments; see ``corey_compile.Options`` for the list.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"corey: unknown mode {mode!r}; torch.compile's modes are {sorted(MODES)}")
    if MODES.get(mode):
        kwargs = {**kwargs, "cuda_graphs": True}
    opts = resolve_options({**(options or {}), **kwargs})
    report = CompileReport(graph_index=next(_GRAPH_IDS), nodes_before=len(gm.graph.nodes),
                           inner_compiler=opts.inner_compiler, options=dataclasses.asdict(opts),
                           pipeline=[p.name for p in pipeline_for(opts)])
    _remember(report)
    start_inductor_workers(opts, "when the backend was called")
    report.inductor_workers = _INDUCTOR_WORKERS["started"]
    record_dynamo_facts(gm, report)
    device = _device_of(example_inputs)
    report.known_calls = known_functions.take_decisions()
    report.length_marked = known_functions.take_length_marks()
    recorder = None
    if opts.debug_dir:
        from .debug import GraphRecorder

        recorder = GraphRecorder(opts.debug_dir, report.graph_index)
    _say(f"graph {report.graph_index}: {report.nodes_before} nodes")
    if _requires_grad(example_inputs):
        report.decline("whole graph", "inputs require grad: corey compiles inference graphs; ran the graph unchanged")
        rewritten = gm
    else:
        ctx = CompileContext(options=opts, report=report, device=device,
                             example_inputs=list(example_inputs),
                             progress=_progress)
        start = time.perf_counter()
        try:
            rewritten = run_pipeline(copy_graph_module(gm), ctx, recorder)
        except PassError as exc:
            if opts.strict:
                raise
            warnings.warn(f"{exc}; running this graph as the model wrote it", stacklevel=2)
            report.fell_back, report.fallback_reason = True, str(exc)
            report.regions.clear()
            rewritten = gm
        report.seconds["passes"] = round(time.perf_counter() - start, 4)
    report.nodes_after = len(rewritten.graph.nodes)
    _say(f"graph {report.graph_index}: inner compiler {opts.inner_compiler}")
    # Only beside Inductor: with the eager inner compiler nothing would run while the child compiles.
    warmup = (start_warmup(rewritten, device)
              if opts.warm_up_kernels and opts.inner_compiler == "inductor" else None)
    capture = opts.cuda_graphs and not hands_scan_state_out(rewritten)
    if capture:
        report.static_inputs = mark_written_inputs_static(rewritten)
    start = time.perf_counter()
    try:
        with _CudaGraphSkips() as skips:
            compiled = _compile_sharing_layers(rewritten, example_inputs, opts, mode, capture, report)
    except BaseException as exc:
        if warmup is not None:
            warmup.cancel()
        if isinstance(exc, _DYNAMO_CONTROL) and report in _REPORTS:  # Dynamo drops this graph and traces again
            _REPORTS.remove(report)
        raise
    report.seconds["inner_compiler"] = round(time.perf_counter() - start, 4)
    if opts.cuda_graphs and not capture:
        report.cuda_graphs = ("off: the graph hands a scan's final state out (a cache the model keeps), and a CUDA "
                              "graph's outputs are overwritten by its next replay")
    elif opts.cuda_graphs:
        report.cuda_graphs = ("off: " + "; ".join(skips.reasons) if skips.reasons
                              else "on" if device.type == "cuda" else f"off: the graph runs on {device.type}")
    if warmup is not None:
        start = time.perf_counter()
        report.seconds["kernel_warmup"] = round(warmup.join(), 4)  # in the background, beside the inner compiler
        report.seconds["kernel_warmup_waited"] = round(time.perf_counter() - start, 4)
        if warmup.background:
            report.seconds["kernel_warmup_background"] = warmup.background  # kernels of later lengths, not waited for
        if warmup.reused:  # kernels whose child started earlier: while Dynamo traced, or for an earlier graph
            report.seconds["kernel_warmup_reused"] = warmup.reused
        if warmup.error:
            report.decline("kernel warm-up", f"{warmup.error}; the first run compiles the kernels instead")
    if recorder is not None:
        report.debug_dir = str(recorder.folder)
        recorder.finish(report)
    return compiled

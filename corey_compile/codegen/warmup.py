"""Compile the Triton kernels a graph's ``corey::`` ops will launch, while the inner compiler works.

Triton compiles a kernel on its first launch, so without this the first call of a compiled model
waits for Inductor and then for every distinct corey kernel, one after the other (each of the
prefill kernel's two parts took Triton about 10 s on an H200 machine's host, most of it in its
coalescing pass). The backend starts a child process before it calls the inner compiler and waits
for it after: the child runs each distinct op call of the graph (same shapes, dtypes and flags,
and the strides its kernel will get: contiguous where Inductor or the op makes them so; the layers
of a model share one) once on zero-filled tensors of the sizes of the call being compiled (a
symbolic size by its value in the example inputs), so Triton compiles exactly the specializations
the first run needs, into its on-disk cache, where the parent's first launch finds them. Each of
the scan's two kernels (whole chunks, partial chunk) compiles in a child of its own. The kernels
of the lengths after it are compiled too, in the background (divisible by 16 or not, with a
partial chunk or without, and at the chunk the policy gives long sequences): the first kernel of
each background child at the parent's priority, the rest at a lower one. Where the length is
symbolic they are what the next lengths launch, and where it is static what the recompilation
with a symbolic length that Dynamo makes at the next length will wait for. A kernel already being
compiled for an earlier graph of the process is not compiled twice: the later graph waits for that
child. Nothing the user owns is read or written.
"""
from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torch.fx as fx

# A part of the prefill kernel takes Triton about 10 s; the decode step compiles in under a second, less than a child
# process takes to start, so its first launch compiles it.
_OPS = {"selective_scan"}


def _example_values(shape_env) -> dict:
    """Each symbol's value in the example inputs (``backed_var_to_val`` from torch 2.13, ``var_to_val`` before)."""
    values = getattr(shape_env, "backed_var_to_val", None)
    return values if values is not None else shape_env.var_to_val


def _concrete(size, values: dict) -> int:
    """A size as an int: a symbolic one evaluated at ``values`` (symbol -> int), else at the example inputs."""
    if isinstance(size, torch.SymInt):
        static = size.node.maybe_as_int()
        if static is not None:
            return static
        expr, shape_env = size.node.expr, size.node.shape_env
        known = {sym: values[sym] if sym in values else _example_values(shape_env).get(sym) for sym in expr.free_symbols}
        if any(v is None for v in known.values()):
            raise ValueError("a symbolic size without an example value")
        return int(expr.subs(known))
    return int(size)


def _spec(value, values: dict):
    """``value`` as JSON: a tensor by its concrete sizes, strides and dtype; other arguments as they are."""
    if isinstance(value, torch.Tensor):
        offset = _concrete(value.storage_offset(), values)
        return {"sizes": [_concrete(x, values) for x in value.shape],
                "strides": [_concrete(x, values) for x in value.stride()], "dtype": str(value.dtype).removeprefix("torch."),
                # where the view starts in its storage: Triton specializes on a 16-byte-aligned address
                "offset": offset, "aligned": offset * value.element_size() % 16 == 0}
    return _concrete(value, values) if isinstance(value, torch.SymInt) else value


def _bound(node_target, args, kwargs) -> dict:
    """An op call's arguments by name, defaults filled in (from the op's schema)."""
    bound = {}
    for i, argument in enumerate(node_target._schema.arguments):
        if i < len(args):
            bound[argument.name] = args[i]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound


# Lengths at which the chunk policy is asked which chunk later calls take (the occupancy policy gives
# half-precision inputs a longer chunk from ``chunk_policy.LONG_SEQUENCE`` steps on).
_PROBE_LENGTHS = (512, 2048, 8192, 32768)


def _later_lengths(example: int, chunk_of) -> list[tuple[int, int]]:
    """(length, chunk) pairs whose kernels are those later calls may launch: for the example's chunk and each
    other chunk the policy gives at ``_PROBE_LENGTHS``, two lengths that 16 does not divide, one whole chunk and
    one more partial chunk of 16 steps.

    Triton compiles a length divisible by 16 and one that is not separately, and the whole chunks and the
    partial one after them are two kernels (``chunk.scan_kernel_parts``); any length of a kind compiles the
    same kernel, so the shortest of each is taken, which keeps the children's tensors small. Kernels that come
    out the same are compiled once (``_kernel_key``). The lengths 16 does not divide come first: 15 prompt
    lengths in 16 are such, and they need both of their kernels (whole chunks and the partial one), which the
    background children, taking the jobs in turn, then compile first and side by side."""
    lengths, chunks = [], []
    for seqlen in (example, *_PROBE_LENGTHS):
        chunk = chunk_of(seqlen)
        if chunk in chunks:
            continue
        chunks.append(chunk)
        lengths += [(n, chunk) for n in (chunk + 1, chunk + 2, chunk, chunk + 16)]
    return lengths


def _length_classes(u, chunk_of) -> list:
    """The values of a scan's symbolic length to compile at, each with its chunk (None: the policy's at that
    length): the example's, then those of ``_later_lengths``. Empty where the length is not one symbol with an
    example value."""
    length = u.shape[-1] if isinstance(u, torch.Tensor) else None
    if not isinstance(length, torch.SymInt) or length.node.maybe_as_int() is not None:
        return []
    symbol = length.node.expr
    hint = _example_values(length.node.shape_env).get(symbol) if getattr(symbol, "is_Symbol", False) else None
    if hint is None:
        return []
    return [({symbol: int(hint)}, None)] + [({symbol: n}, chunk) for n, chunk in _later_lengths(int(hint), chunk_of)]


def _at_length(call: dict, names: list, seqlen: int) -> dict | None:
    """A static graph's op call with its length replaced by ``seqlen``: the inputs along the steps
    (``_STEP_INPUTS``) take the new length and contiguous strides, as the kernel gets them. None where one of
    them is not contiguous as the kernel gets it (its other strides might hold the length: not guessed)."""
    def at(name, spec):
        if name not in _STEP_INPUTS or not isinstance(spec, dict):
            return spec
        if spec["strides"] != _contiguous_strides(spec["sizes"]):
            raise ValueError(name)
        sizes = spec["sizes"][:-1] + [seqlen]
        return {**spec, "sizes": sizes, "strides": _contiguous_strides(sizes)}

    try:
        return {"op": call["op"], "args": [at(names[i], a) for i, a in enumerate(call["args"])],
                "kwargs": {k: at(k, v) for k, v in call["kwargs"].items()}}
    except ValueError:
        return None


# The scan's inputs whose steps the op makes adjacent before its kernel reads them (``ops._steps_contiguous``).
_STEP_INPUTS = ("u", "delta", "B", "C", "z")


def _contiguous_strides(sizes: list) -> list:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= max(size, 1)
    return strides[::-1]


def _as_the_kernel_gets_it(name: str, spec, contiguous_inputs: bool):
    """A tensor argument's spec as the kernel will get it at run time, not as the graph's metadata has it.

    With the op's ``needs_contiguous_strides`` tag (``contiguous_inputs``), Inductor hands the op every
    tensor contiguous; without it, the op copies an input whose steps are apart itself. Either way a
    transposed view in the metadata (transformers' gate, B and C) reaches the kernel contiguous, and Triton
    specializes on that (a step stride of 1 is a constant): compiled as the metadata has it, the warm-up
    would compile a kernel the run never launches, and the run would compile its own."""
    if not isinstance(spec, dict):
        return spec
    sizes, strides = spec["sizes"], spec["strides"]
    canonical = _contiguous_strides(sizes)
    if contiguous_inputs:
        if all(size <= 1 or stride == want for size, stride, want in zip(sizes, strides, canonical)):
            return spec
    elif name not in _STEP_INPUTS or not sizes or sizes[-1] <= 1 or strides[-1] == 1:
        return spec
    return {**spec, "strides": canonical, "offset": 0, "aligned": True}


def _specialization(value):
    """What Triton specializes an integer argument on: 1, divisible by 16, or neither."""
    if isinstance(value, dict):  # a tensor's offset counts through its alignment alone
        return {k: _specialization(v) for k, v in value.items() if k != "offset"}
    if isinstance(value, list):
        return [_specialization(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return "one" if value == 1 else "16n" if value % 16 == 0 else "int"
    return value


def _kernel_key(spec: dict) -> str:
    """Two jobs whose kernels Triton would compile alike (same chunk, part and argument specializations)."""
    spec = {k: v for k, v in spec.items() if k != "needed"}
    return json.dumps({**_specialization(spec), "chunk": spec.get("chunk"), "kernels": spec.get("kernels")}, sort_keys=True)


def op_calls(gm: fx.GraphModule, device: torch.device = torch.device("cpu")) -> list:
    """The warm-up's jobs, as JSON: one per distinct kernel the graph's corey op calls will compile (op name,
    concrete arguments, and for a scan its chunk and which of its two kernels), and for a scan over a
    symbolic length the kernels of the lengths after it too (``_length_classes``)."""
    from ..passes.graph_reading import meta_value
    from ..passes.lower_regions import LATER_CHUNK
    from .ops import _CONTIGUOUS_INPUTS, scan_chunk
    from .selective_scan.chunk import scan_kernel_parts

    specs, seen = [], set()
    contiguous_inputs = bool(_CONTIGUOUS_INPUTS)  # the op carries the tag: Inductor hands it every tensor contiguous
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "namespace", None) != "corey":
            continue
        if node.target._opname not in _OPS:
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), meta_value)
        bound = _bound(node.target, args, kwargs)

        planned = _concrete(bound["chunk_size"], {})

        def chunk_of(seqlen, planned=planned):
            shape = [_concrete(x, {}) for x in bound["u"].shape[:-1]] + [seqlen]
            return scan_chunk(shape, bound["u"].dtype.itemsize, device, planned, bound["chunk_policy"])

        # A static graph's plan fixes its own length's chunk; the graph of a later length gets LATER_CHUNK
        later_chunk = node.meta.get(LATER_CHUNK, planned)

        names = [argument.name for argument in node.target._schema.arguments]
        calls = []  # (call, its length, its chunk or None for the policy's, whether the first run launches it)
        for index, (values, fixed_chunk) in enumerate(_length_classes(bound["u"], chunk_of) or [({}, None)]):
            try:
                call = {"op": node.target._opname,
                        "args": [_as_the_kernel_gets_it(names[i], _spec(a, values), contiguous_inputs)
                                 for i, a in enumerate(args)],
                        "kwargs": {k: _as_the_kernel_gets_it(k, _spec(v, values), contiguous_inputs)
                                   for k, v in kwargs.items()}}
                seqlen = _concrete(bound["u"].shape[-1], values)
            except (ValueError, TypeError):
                continue  # a size with no example value: the first run compiles this one
            # the first length is the example's, which the first run launches: the compilation waits for it
            calls.append((call, seqlen, fixed_chunk, index == 0))
        if len(calls) == 1 and calls[0][3] and calls[0][1] > 1:  # a static length: the next lengths' kernels too
            call, seqlen, _, _ = calls[0]
            calls += [(later, n, chunk, False)
                      for n, chunk in _later_lengths(seqlen, lambda n: chunk_of(n, later_chunk))
                      if (later := _at_length(call, names, n)) is not None]
        for call, seqlen, fixed_chunk, needed in calls:
            if seqlen == 1:
                continue  # one step runs the decode kernel, which compiles in under a second
            chunk = fixed_chunk or chunk_of(seqlen)
            for part in scan_kernel_parts(seqlen, chunk):
                spec = {**call, "chunk": chunk, "kernels": part, "needed": needed}
                key = _kernel_key(spec)
                if key not in seen:
                    seen.add(key)
                    specs.append(spec)
    return specs


def _from_spec(spec, device):
    """A zero tensor of the spec's sizes, strides, dtype and offset in its storage; other arguments as they are."""
    if isinstance(spec, dict):
        dtype = getattr(torch, spec["dtype"])
        extent = 1 + sum((size - 1) * stride for size, stride in zip(spec["sizes"], spec["strides"]) if size > 0)
        storage = torch.zeros(spec.get("offset", 0) + extent, dtype=dtype, device=device)
        return storage.as_strided(spec["sizes"], spec["strides"], spec.get("offset", 0))
    return spec


# What a child runs (imported, not run as ``-m``, so the module is not loaded twice).
_CHILD = "import sys; from corey_compile.codegen.warmup import _main; _main(*sys.argv[1:5])"


# The children this process started, by what decides their kernel (``_process_key``): a later graph that needs a
# kernel an earlier one's child compiles (or compiled) waits for that child rather than compiling it again.
_STARTED: dict = {}
# Where a background child marks each of its kernels compiled, by the same key: a call waits for its kernel, not for
# every kernel the child compiles after it (the 1.4b shapes' l=1000 call waited 6.9 s on an H100 for the end of the
# two children whose first kernels it launches, which had five more to compile between them: inferred from the
# jobs' order, not timed kernel by kernel).
_MARKS: dict = {}
# A background child compiles its first kernel at the parent's priority: the order of ``_later_lengths`` puts first
# the two kernels 15 prompt lengths in 16 launch, which the next call most likely needs. Its later kernels yield the
# cores to the compilation under way.
_BACKGROUND_NICENESS = 10
_BACKGROUND_CHILDREN = 2  # children that compile the kernels of later lengths, one after the other in each


def _process_key(spec: dict, device) -> str:
    """``_kernel_key`` and what else a kernel's compilation depends on across graphs: the device and the exact
    sizes of A (channels and states; the states size the kernel's tiles)."""
    a = _bound(getattr(torch.ops.corey, spec["op"]).default, spec["args"], spec["kwargs"]).get("A")
    return json.dumps([_kernel_key(spec), str(device), a.get("sizes") if isinstance(a, dict) else None])


class Warmup:
    """Child processes that launch each distinct kernel (``op_calls``) once on zero tensors, so that Triton
    compiles the kernels into its on-disk cache beside the parent's inner compiler (a thread would share the
    parent's interpreter lock with it). Each kernel the first run launches compiles in a child of its own, side
    by side; the parent's first launch then loads them from the cache, and ``join()`` waits for them. The
    kernels of later lengths go on compiling in the background, shared among at most ``_BACKGROUND_CHILDREN``
    children (each child holds a CUDA context on the user's GPU), each child's first at the parent's priority
    and the rest at a lower one; a background child marks each kernel compiled (``_MARKS``), and a call that
    needs one waits for its mark (``wait_for_child``), not for the kernels the child compiles after it. A
    kernel whose child an earlier graph of this process started, still running or ended well, is waited for
    there, not compiled again."""

    def __init__(self, specs: list, device: torch.device):
        self.error, self.seconds = None, 0.0
        self.needed = [spec.get("needed", True) for spec in specs]
        package_root = str(pathlib.Path(__file__).resolve().parents[2])  # so the child finds corey from a checkout too
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
                        COREY_KERNELS_ONLY="1")
        self.device = device
        self.start_time = time.perf_counter()
        # what join() waits for, (child, the mark of the kernel in it or None: its end); the children this graph started
        self.waited, self.own, self.reused = [], [], 0
        later = []  # (key, spec): kernels of later lengths that no earlier child compiles
        for spec, needed in zip(specs, self.needed):
            key = _process_key(spec, device)
            earlier = _STARTED.get(key)
            if earlier is not None and earlier.poll() in (None, 0):
                self.reused += 1
                if needed:
                    self.waited.append((earlier, _MARKS.get(key)))
            elif needed:
                _STARTED[key] = self._start([spec], background=False)
                _MARKS.pop(key, None)
                self.waited.append((_STARTED[key], None))
            else:
                later.append((key, spec))
        for i in range(min(len(later), _BACKGROUND_CHILDREN)):
            share = later[i::_BACKGROUND_CHILDREN]
            marks = _marks_folder()
            process = self._start([spec for _, spec in share], background=True, marks=marks)
            for index, (key, _) in enumerate(share):
                _STARTED[key] = process
                _MARKS[key] = os.path.join(marks, str(index))

    def _start(self, specs: list, background: bool, marks: str = "") -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(self.device), json.dumps(specs),
             str(_BACKGROUND_NICENESS if background else 0), marks],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if background else subprocess.PIPE, text=True,
            env=self.env)
        self.own.append(process)
        return process

    @property
    def background(self) -> int:
        """How many kernels, of later lengths, compile on without being waited for."""
        return self.needed.count(False)

    def cancel(self) -> None:
        """Stop the children this graph started (the compilation they served failed)."""
        for process in self.own:
            if process.poll() is None:
                process.kill()
            process.wait()

    def join(self, timeout: float = 600.0) -> float:
        for process, mark in self.waited:
            try:
                remaining = max(1.0, timeout - (time.perf_counter() - self.start_time))
                if mark is not None:  # a kernel of an earlier graph's background child, which compiles others after it
                    _wait_for_kernel(process, mark, remaining)
                    if os.path.exists(mark) or process.poll() is None:
                        continue  # compiled (or past the timeout: the launch compiles it, as without the warm-up)
                    err = ""
                elif process.stderr is None or process.stderr.closed:  # a background child, or one already joined
                    process.wait(timeout=remaining)
                    err = ""
                else:
                    _, err = process.communicate(timeout=remaining)
                if process.returncode != 0 and self.error is None:
                    lines = (err or "").strip().splitlines()
                    self.error = lines[-1] if lines else f"exit status {process.returncode}"
            except subprocess.TimeoutExpired:
                process.kill()
                self.error = f"still compiling after {timeout:.0f} s"
        self.seconds = time.perf_counter() - self.start_time
        return self.seconds


# The policies whose chunk a static shape decides alone (``planning.choose_chunk``): what the early start can apply.
_EARLY_POLICIES = ("occupancy", "seqlen", "fixed")


def _scan_call(specs: dict) -> dict:
    """A ``selective_scan`` op call as a warm-up job has it, from its arguments' specs by name (``_spec``), each
    tensor as the kernel gets it: how a call foreseen during the trace and a call at run time name their kernel
    alike (``_process_key``)."""
    from .ops import _CONTIGUOUS_INPUTS

    return {"op": "selective_scan", "args": [],
            "kwargs": {k: _as_the_kernel_gets_it(k, v, bool(_CONTIGUOUS_INPUTS)) for k, v in specs.items()}}


def early_specs(arguments: dict, options, device: torch.device) -> list:
    """The kernels the backend's warm-up will ask for a scan whose arguments Dynamo is tracing now: the jobs
    ``op_calls`` will give the ``selective_scan`` op that lowering makes of it, from the arguments as the op will
    get them (u, delta, A, B, C, D, z, delta_bias as tensors, delta_softplus), before Dynamo has finished the
    graph. Empty where that op cannot be foreseen from them alone: a policy that reads measurements or times the
    call, a fusion plan other than ``all`` (which absorbs all four neighbours), a symbolic size without an
    example value, or a symbolic size under a policy the op does not apply per call as the planner would.

    A symbolic size counts at its value in the example inputs, which is what the first run launches; where the
    length is symbolic the plan leaves the chunk to the op (chunk 0), which applies ``op_chunk_policy``."""
    from ..passes.lower_regions import op_chunk_policy
    from ..planning import choose_chunk, sm_count
    from .ops import scan_chunk
    from .selective_scan.chunk import scan_kernel_parts

    if options.fusion != "all" or options.chunk_policy not in _EARLY_POLICIES:
        return []
    tensors = [v for v in arguments.values() if isinstance(v, torch.Tensor)]
    symbolic = any(isinstance(x, torch.SymInt) and x.node.maybe_as_int() is None
                   for t in tensors for x in (*t.shape, *t.stride(), t.storage_offset()))
    policy = op_chunk_policy(options)
    if symbolic and policy != options.chunk_policy:
        return []
    u = arguments["u"]
    try:
        batch, dim, seqlen = (_concrete(x, {}) for x in u.shape)
        specs = {k: _spec(v, {}) for k, v in arguments.items()}
    except (ValueError, TypeError):
        return []  # a size with no example value
    if seqlen <= 1:
        return []  # a decode step's kernel
    if symbolic:
        chunk, planned = scan_chunk((batch, dim, seqlen), u.element_size(), device, 0, policy), 0
    else:
        chunk = planned = choose_chunk(options.chunk_policy, batch, dim, seqlen, sm_count(device), options.chunk_size,
                                       u.element_size())[0]
    call = _scan_call({**specs, "initial_state": None, "chunk_size": planned, "chunk_policy": policy})
    jobs = [{**call, "chunk": chunk, "kernels": part, "needed": True} for part in scan_kernel_parts(seqlen, chunk)]
    if symbolic:  # the graph serves later lengths: their kernels compile in the background from now on, too
        names = [argument.name for argument in torch.ops.corey.selective_scan.default._schema.arguments]
        keys = {_kernel_key(job) for job in jobs}
        for n, later_chunk in _later_lengths(seqlen, lambda n: scan_chunk((batch, dim, n), u.element_size(), device,
                                                                         0, policy)):
            later = _at_length(call, names, n)
            for part in scan_kernel_parts(n, later_chunk) if later is not None else ():
                job = {**later, "chunk": later_chunk, "kernels": part, "needed": False}
                if _kernel_key(job) not in keys:
                    keys.add(_kernel_key(job))
                    jobs.append(job)
    return jobs


def start_early(arguments: dict, options) -> int:
    """Start compiling, while Dynamo still traces, the kernels ``early_specs`` foresees, each in a child of its
    own, and those of later lengths in the background (on a CUDA device; once per kernel and process): the
    backend's warm-up then waits for these children rather than starting its own after Dynamo and corey's
    passes. Returns how many children it started."""
    device = arguments["u"].device
    if device.type != "cuda":
        return 0
    specs = early_specs(arguments, options, device)  # Warmup waits for a kernel an earlier child compiles
    return len(Warmup(specs, device).own) if specs else 0


_BACKGROUND_CHECK = {"at": 0.0, "running": False}  # whether a child of this process compiles still, looked up
_BACKGROUND_CHECK_EVERY = 0.05  # seconds: a poll of every child costs a system call each
_WAITED_FOR: set = set()  # the calls' kernel classes whose children were looked up (``wait_for_child``)


def background_running() -> bool:
    """Whether a warm-up child of this process may still be compiling (looked up at most every 50 ms)."""
    if not _STARTED:
        return False
    now = time.monotonic()
    if now - _BACKGROUND_CHECK["at"] > _BACKGROUND_CHECK_EVERY:
        _BACKGROUND_CHECK.update(at=now, running=any(p.poll() is None for p in set(_STARTED.values())))
    return _BACKGROUND_CHECK["running"]


def wait_for_child(arguments: dict, chunk: int, timeout: float = 600.0) -> float:
    """Before a scan call's launch: where a warm-up child of this process is compiling this call's kernels (a
    later length's, in the background), wait for it rather than compile the same kernel here beside it (Triton
    would; the child started earlier). ``arguments``: the ``selective_scan`` op's, by name, as its kernel gets
    them; ``chunk``: the one it runs. Returns the seconds waited. Each kernel class is looked up once."""
    from .selective_scan.chunk import scan_kernel_parts

    u = arguments["u"]
    seqlen = u.shape[-1]
    call = _scan_call({k: _spec(v, {}) for k, v in arguments.items()})
    start = time.perf_counter()
    for part in scan_kernel_parts(seqlen, chunk):
        key = _process_key({**call, "chunk": chunk, "kernels": part}, u.device)
        if key in _WAITED_FOR:
            continue
        _WAITED_FOR.add(key)
        process = _STARTED.get(key)
        if process is not None and process.poll() is None:
            _wait_for_kernel(process, _MARKS.get(key), timeout)
    return time.perf_counter() - start


_MARK_POLL = 0.01  # seconds between looks for a kernel's mark


def _wait_for_kernel(process: subprocess.Popen, mark: str | None, timeout: float) -> None:
    """Until ``process`` has marked the kernel compiled (``mark``, a file it creates after it) or has ended; past
    ``timeout`` the launch compiles the kernel itself, as without the warm-up."""
    if mark is None:  # a child of one kernel: its end is the mark
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    deadline = time.perf_counter() + timeout
    while process.poll() is None and not os.path.exists(mark) and time.perf_counter() < deadline:
        time.sleep(_MARK_POLL)


_MARK_FOLDERS: list = []


def _marks_folder() -> str:
    """A new folder for one background child's marks, removed when this process exits."""
    if not _MARK_FOLDERS:
        atexit.register(lambda: [shutil.rmtree(folder, ignore_errors=True) for folder in _MARK_FOLDERS])
    _MARK_FOLDERS.append(tempfile.mkdtemp(prefix="corey-warmup-"))
    return _MARK_FOLDERS[-1]


def start_warmup(gm: fx.GraphModule, device: torch.device) -> Warmup | None:
    """Start compiling the kernels of ``gm``'s corey ops in child processes, on a CUDA device; else None."""
    if device.type != "cuda":
        return None
    specs = op_calls(gm, device)
    return Warmup(specs, device) if specs else None


def _main(device: str, specs: str, niceness: str = "0", marks: str = "") -> None:
    """Launch each job's kernel once on zero tensors; ``niceness`` (a background child's) is taken after the first,
    and with ``marks`` (a folder) the file named by a job's index is created once its kernel is compiled."""
    from .ops import uses_triton

    if not uses_triton(torch.device(device)):
        return  # no kernel to compile: the ops run their torch path here
    from .selective_scan.chunk import selective_scan_chunked

    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "initial_state")
    with torch.no_grad():
        for index, spec in enumerate(json.loads(specs)):
            if index == 1 and int(niceness) and hasattr(os, "nice"):
                os.nice(int(niceness))
            args = [_from_spec(a, device) for a in spec["args"]]
            kwargs = {k: _from_spec(v, device) for k, v in spec["kwargs"].items()}
            bound = _bound(getattr(torch.ops.corey, spec["op"]).default, args, kwargs)
            selective_scan_chunked(*(bound[name] for name in names), chunk_size=spec["chunk"], kernels=spec["kernels"])
            if marks:  # compiled and in Triton's cache: Triton compiles a kernel before its launch returns
                open(os.path.join(marks, str(index)), "w").close()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)

"""OpenVINO on the CPU as effscale runs it: one compiled model per batch size (static shapes: the
CPU plugin plans memory and picks kernels once, instead of per call), and a batch of at least
`streams` images split over `streams` parallel inference streams of one thread each.

Why streams: at batch > 1 most of an EfficientNet's time is depthwise convs, swish and the SE
gate, all memory-bound; one stream per core keeps each core's images in its own cache instead of
both cores sharing every layer's tensors. Measured on a 2-core AVX-512 machine in bf16: 1.11x
OpenVINO's default latency mode at B0 batch 32, 1.18x at B3 batch 8 (benchmarks/deploy.py,
BENCHMARKS.md).
A batch of one image runs in latency mode on all threads (streams would leave cores idle).

Weight-only compressed models (INT8 weights decompressed at run time, no FakeQuantize) always
run on one stream: OpenVINO 2026.4's CPU plugin returns garbage from them intermittently with
two streams (seen in fp32 and bf16: logits of 1e4-1e15 in 1-2 of 3 fresh runs of the same batches,
none with one stream; float and static INT8 models gave identical outputs over 6 runs).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

CACHED_SHAPES = 4  # compiled models kept (eval's last, smaller batch is one more shape)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def weight_compressed(model) -> bool:
    """Integer weight constants without any FakeQuantize: a weight-only compressed model."""
    types = {op.get_type_name() for op in model.get_ordered_ops()}
    integer = any(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
                  for op in model.get_ordered_ops())
    return integer and "FakeQuantize" not in types


class OpenVINOModel:
    """`threads`: CPU threads in all (default: OpenVINO's choice, every core). `profiling`: compile
    with OpenVINO's per-node counters on (`node_times()`), as a runtime profile reads them."""

    def __init__(self, ov, path: Path, hint: str, streams: int, threads: int | None = None,
                 profiling: bool = False):
        self.core, self.hint, self.streams = ov.Core(), hint, max(1, int(streams))
        self.threads, self.profiling = threads, profiling
        self.model = self.core.read_model(str(path))
        if weight_compressed(self.model):
            self.streams = 1
        self.compiled: OrderedDict[tuple, tuple] = OrderedDict()

    def precision(self):
        """What the CPU plugin runs float ops in, read back from a compiled model (not the hint)."""
        if self.compiled:
            return next(iter(self.compiled.values()))[0].get_property("INFERENCE_PRECISION_HINT")
        compiled = self.core.compile_model(self.model, "CPU", {"INFERENCE_PRECISION_HINT": self.hint})
        return compiled.get_property("INFERENCE_PRECISION_HINT")  # the file's own (dynamic) shapes

    def _compiled(self, shape: tuple):
        if shape in self.compiled:
            self.compiled.move_to_end(shape)
            return self.compiled[shape]
        batch = shape[0]
        streams = self.streams if batch >= self.streams and batch % self.streams == 0 else 1
        model = self.model.clone()
        model.reshape({model.inputs[0]: [batch // streams, *shape[1:]]})
        config = {"INFERENCE_PRECISION_HINT": self.hint}
        if streams > 1:
            config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams,
                          INFERENCE_NUM_THREADS=max(streams, self.threads or streams))
        else:
            config.update(PERFORMANCE_HINT="LATENCY")
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = self.threads
        if self.profiling:
            config["PERF_COUNT"] = True
        compiled = self.core.compile_model(model, "CPU", config)
        entry = (compiled, [compiled.create_infer_request() for _ in range(streams)])
        self.compiled[shape] = entry
        if len(self.compiled) > CACHED_SHAPES:
            self.compiled.popitem(last=False)
        return entry

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        compiled, requests = self._compiled(tuple(batch.shape))
        if len(requests) == 1:
            result = requests[0].infer({0: batch})
            return [np.array(result[output]) for output in compiled.outputs]
        for request, part in zip(requests, np.split(batch, len(requests))):
            request.start_async({0: part})
        for request in requests:
            request.wait()
        return [np.concatenate([np.array(request.get_tensor(output).data) for request in requests])
                for output in compiled.outputs]

    def node_times(self) -> list[tuple[str, float]]:
        """(node type, ms) of every node the last call executed, in execution order (profiling=True)."""
        if not self.profiling or not self.compiled:
            raise RuntimeError("node_times() needs profiling=True and one call first")
        requests = next(reversed(self.compiled.values()))[1]
        return [(info.node_type, info.real_time.total_seconds() * 1e3) for info in requests[0].get_profiling_info()
                if str(info.status).endswith("EXECUTED")]


__all__ = ["OpenVINOModel", "usable_cpus"]

"""One model step replayed from a CUDA graph, for fixed-shape rollouts on a CUDA device.

An ensemble rollout calls the same step hundreds of times on a state of one shape, so the
launch overhead of every kernel is paid again each step. :class:`GraphedStep` captures the step
once per input shape into a :class:`torch.cuda.CUDAGraph` and replays it: a static input buffer
receives each state (``copy_``), the graph reruns every kernel on it, and the static output is
copied out. Capture follows the PyTorch CUDA Graphs recipe: a few warm-up calls on a side stream
(cuFFT plans, cuBLAS handles and allocator state are created there, outside capture), then the
capture on that same stream.

The step must be a pure function of its input on the GPU: no host synchronisation, no
data-dependent control flow and no new random numbers (a forecast step has none of these).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fourcast.errors import CudaGraphsUnavailableError

#: Warm-up calls before capture (the PyTorch docs use 3; DDP-free inference needs no more).
WARMUP_CALLS = 3


def require_cuda(device: torch.device, what: str = "CUDA graphs") -> None:
    """Raise :class:`CudaGraphsUnavailableError` unless ``device`` is a CUDA device that exists here."""
    if device.type != "cuda":
        raise CudaGraphsUnavailableError(
            f"{what} need a CUDA device; found device {device} "
            "(set forecast.cuda_graphs: false, or run on a GPU)"
        )
    if not torch.cuda.is_available():
        raise CudaGraphsUnavailableError(
            f"{what} need a CUDA device; device {device} was asked for but "
            "torch finds no CUDA device on this machine"
        )


class GraphedStep:
    """``fn(x)`` replayed from one CUDA graph per input shape and dtype.

    Parameters
    ----------
    fn : callable
        ``fn(x) -> y`` with ``x`` and ``y`` tensors on ``device``; captured as it runs on the
        first input of each shape, so it must not synchronise with the host or branch on values.
    device : torch.device
        The CUDA device ``fn`` runs on.

    Raises
    ------
    CudaGraphsUnavailableError
        If ``device`` is not CUDA or no CUDA device is present.

    Notes
    -----
    Each shape keeps its own graph and private memory pool (no pool sharing, so replays in any
    order are safe); a rollout uses one or two shapes (full member blocks and the last, smaller
    one). The returned tensor is a copy, so it stays valid after the next replay.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        require_cuda(device)
        self._fn = fn
        self._device = device
        self._graphs: dict[tuple, tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def captured_shapes(self) -> list[tuple[int, ...]]:
        """Input shapes captured so far."""
        return [key[0] for key in self._graphs]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` by replay, shape ``fn``'s output shape; ``x`` must be on the graph's device."""
        if x.device.type != "cuda":
            raise CudaGraphsUnavailableError(f"a graphed step takes a CUDA tensor; found one on {x.device}")
        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        static_in, graph, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream, then capture ``fn`` on a static copy of ``x`` on that stream."""
        static_in = x.detach().clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            static_out = self._fn(static_in)
        return static_in, graph, static_out

"""``torch.compile`` for the training step, behind guards that never stop a run.

``[run].compile``: "off"; "default" (inductor fuses the step's kernels); "reduce-overhead"
(inductor + CUDA graphs: each compiled forward and backward replays as a single launch, which is
what takes Python launch overhead out of the step of a small student).

What falls back, each time with a ``compile`` event that says why (train.py emits them):
* compile unavailable here (no ``torch.compile``, no Triton for CUDA, no C++ compiler for CPU
  inductor) -> eager;
* "reduce-overhead" under DDP -> "default": DDP's gradient all-reduce runs from hooks between
  the compiled pieces of the backward, and CUDA graphs across those were not measured here;
* a compile error during the first step -> that step is undone and the phase runs eagerly (one
  process only: under DDP the run stops and says to set ``compile = "off"``, because DDP's
  reducer cannot be rewound from the middle of a backward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

MODES = ("off", "default", "reduce-overhead")


def unavailable_reason(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` here, or None when it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "cannot check for Triton in this torch build"
        return None if has_triton() else "Triton is not installed (pip install triton) or does not support this GPU"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any failure to find a compiler means "not available"
        return f"no C++ compiler for CPU inductor ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def is_compile_error(e: BaseException) -> bool:
    """Errors raised by dynamo tracing or by a backend compiling, as opposed to the model's own."""
    import torch._dynamo.exc as dynamo_exc

    return isinstance(e, dynamo_exc.TorchDynamoException) or type(e).__module__.startswith(
        ("torch._inductor", "torch._dynamo", "triton")
    )


def describe(e: BaseException, limit: int = 300) -> str:
    """One line for an event: the error and, for a wrapped backend failure, its cause (dynamo's
    own message starts with a line that names only the backend)."""

    def first_line(x: BaseException) -> str:
        lines = [ln.strip() for ln in str(x).splitlines() if ln.strip()]
        return f"{type(x).__name__}: {lines[0]}" if lines else type(x).__name__

    inner = getattr(e, "inner_exception", None)
    text = first_line(e) if inner is None else f"{type(e).__name__} ({first_line(inner)})"
    return text[:limit]


@dataclass(frozen=True)
class Compiler:
    """Compiles the step's callables for one phase. ``backend`` other than "inductor" is for
    tests (e.g. "eager" traces with dynamo only; a failing callable exercises the fallback)."""

    mode: str = "off"
    backend: str | Callable = "inductor"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def cudagraphs(self) -> bool:
        return self.mode == "reduce-overhead" and self.backend == "inductor"

    def __call__(self, fn: Callable, cudagraphs: bool = True) -> Callable:
        if not self.enabled:
            return fn
        if self.backend != "inductor":
            return torch.compile(fn, backend=self.backend)
        return torch.compile(fn, mode=self.mode if cudagraphs else "default")

    def without_cudagraphs(self, fn: Callable) -> Callable:
        """For callables whose outputs live across several other compiled calls (data views,
        teacher targets): CUDA graphs would recycle their memory, and they gain little from them."""
        return self(fn, cudagraphs=False)

    def mark_step(self) -> None:
        # Tells CUDA-graph trees that the previous step's outputs are dead, so memory is reused.
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()


def choose(
    mode: str, device: torch.device, world: int, backend: str | Callable = "inductor"
) -> tuple[Compiler, str | None]:
    """(the compiler for a phase, a reason when it differs from ``mode``)."""
    if mode == "off":
        return Compiler("off"), None
    if backend == "inductor":
        why = unavailable_reason(device)
        if why:
            return Compiler("off"), f"compile unavailable, running eagerly: {why}"
    if mode == "reduce-overhead" and world > 1:
        return (
            Compiler("default", backend),
            "reduce-overhead (CUDA graphs) is not combined with DDP here; using mode 'default'",
        )
    return Compiler(mode, backend), None

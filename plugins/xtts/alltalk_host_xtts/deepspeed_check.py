"""Whether ``deepspeed = true`` may be set: refused until a version pair is known to work.

Read against the pinned stack: with transformers 5.23, DeepSpeed's injected inference layers
return tuples where GPT-2's final LayerNorm expects a tensor, and they do not update the KV
cache, so an XTTS generation through them fails or babbles. DeepSpeed also places the model on
cuda:0 whatever ``device`` names, and cannot run on the CPU at all.

A (deepspeed, transformers) pair joins TESTED only once a generation through it has been
checked on a GPU (tools/gpu_smoke.py is where such a check belongs).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TESTED: frozenset[tuple[str, str]] = frozenset()


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def deepspeed_refusal(device: str) -> str | None:
    """Why ``deepspeed = true`` with this ``device`` setting cannot work here, or None."""
    reasons = []
    if device == "cpu":
        reasons.append("DeepSpeed inference runs only on CUDA and device = 'cpu'")
    elif device not in ("auto", "cuda", "cuda:0"):
        reasons.append(f"DeepSpeed puts the model on cuda:0 whatever device says "
                       f"(device = {device!r})")
    transformers, deepspeed = _installed("transformers"), _installed("deepspeed")
    if (deepspeed or "", transformers or "") not in TESTED:
        reasons.append(
            f"no DeepSpeed version is known to work with transformers {transformers}: with "
            "5.23 its injected layers return tuples where GPT-2's final LayerNorm expects a "
            "tensor and leave the KV cache unchanged"
            + ("" if deepspeed else " (and deepspeed is not installed)"))
    if not reasons:
        return None
    return "deepspeed = true is refused: " + "; ".join(reasons) + "; set deepspeed = false"

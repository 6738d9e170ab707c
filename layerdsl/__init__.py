"""layerdsl: write a PyTorch layer as a small `.layer` spec, get the nn.Module an expert would write."""

__version__ = "0.1.0"

from layerdsl.diagnostics import Diagnostic, SpecError  # noqa: E402

__all__ = ["Diagnostic", "SpecError", "__version__"]

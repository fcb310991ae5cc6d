"""The one error the graph raises for models it cannot represent (also used by pruning)."""
from torch import nn


class UnsupportedModuleError(TypeError):
    """Raised when a module holds parameters the graph (or head pruning) cannot represent."""

    def __init__(self, path: str, module: nn.Module, reason: str):
        self.path, self.module_type = path, type(module).__name__
        super().__init__(f"module '{path}' of type {type(module).__name__} is not supported: {reason}")

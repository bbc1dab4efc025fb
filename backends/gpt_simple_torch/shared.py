"""What other plugins may build on: the trainer's architecture in torch, and loading its weights.

The ONNX exporter traces :class:`GPT` (``GPT.forward_past``) from weights read by
:func:`load_model`, so both backends run one copy of the model math. These names are this
package's public surface: they keep their meaning within a plugin API version, while
everything else in ``gpt_simple_torch`` is internal. Importing this module imports torch.
"""

from gpt_simple_torch.loading import DTYPES, load_model
from gpt_simple_torch.model import GPT

__all__ = ["DTYPES", "GPT", "load_model"]

"""The core of gpt-simple: records, checkpoint resolution, planning, the decode engine and output.

Backends are plugins (see :mod:`gpt_simple_core.hookspecs` and :mod:`gpt_simple_core.protocol`);
nothing in this package imports a heavy runtime such as torch or onnxruntime.
"""

__version__ = "0.1.0"

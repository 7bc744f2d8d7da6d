"""easc: Efficient Architecture Search by network transformation on a verified graph IR.

The package is assembled from the repository's top-level folders (see pyproject.toml):
``eas_ir/`` -> ``easc.ir``, ``passes/`` -> ``easc.passes``, ``backends/`` -> ``easc.backends``,
``search/`` -> ``easc.search``, ``cli/`` -> ``easc.cli``.
"""

__version__ = "0.1.0"

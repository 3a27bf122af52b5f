"""sparkhelpers: the Python core behind the DGX Spark vLLM cluster scripts."""

__version__ = "0.1.0"

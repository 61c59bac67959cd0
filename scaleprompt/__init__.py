"""scaleprompt: prompt learning for large frozen CLIP models at scale."""

__version__ = "0.1.0"

"""An example scaleprompt plug-in: the VPT-shallow method and the Swatches dataset (see docs/extending.md)."""

"""The micro-world: a procedural image world, a tiny CLIP pretrained on it (shipped), and shifted downstream
datasets on which zero-shot accuracy and prompt learning mean something on a CPU.

Its model ``sp-micro-clip`` (config, shipped weights ``"microworld"``, word tokenizer) and its datasets
(``MicroWorld``, ``MicroWorldSketch``, ``MicroWorldClutter``) are registered with the public functions an extension
uses (:func:`scaleprompt.backbone.register_model`, :func:`scaleprompt.data.datasets.register_dataset`), in the
built-in block of each registry. The micro-world's modules import neither registry (they build on
:mod:`scaleprompt.data.layout`), so the imports form no cycle."""

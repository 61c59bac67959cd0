"""The micro-world: a procedural image world, a tiny CLIP pretrained on it (shipped), and shifted downstream
datasets on which zero-shot accuracy and prompt learning mean something on a CPU."""

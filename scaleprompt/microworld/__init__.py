"""The micro-world: a procedural image world and the word tokenizer of the tiny CLIP pretrained on it (shipped).

Only the world (:mod:`~scaleprompt.microworld.world`: scenes, colours, shapes, captions) and the tokenizer live here,
on a low floor: the backbone registry loads ``sp-micro-clip`` with the tokenizer, the data layer builds the shifted
downstream datasets from the world (:mod:`scaleprompt.data.microworld`, registered with the built-in datasets), and
``scaleprompt pretrain-microworld`` (:mod:`scaleprompt.pretrain`) retrains the shipped weights. This package imports
none of them, so the imports form no loop."""

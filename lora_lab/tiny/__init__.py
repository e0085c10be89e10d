"""The generated tiny world: the offline stand-in for the paper's models and data sets.

    world.py      the registry of generated data sets, and tiny-tulu (Tulu3's schema)
    facts.py      tiny-facts: invented entities with a known information content (claim C9)
    maths.py      tiny-math: verifiable integer-answer problems in GSM8K's and MATH's schemas
    thoughts.py   tiny-openthoughts: reasoning traces in OpenThoughts3's schema
    common.py     invented names, the fixed held-out split, the size check
    words.py      the word lists of the pretraining corpus
    presets.py    the architectures of the tiny presets (tiny-llama, tiny-moe)
    tokenizer.py  the shipped byte-level BPE tokenizer and its chat template
    pretrain.py   `lora-lab build-tiny`: the corpus, the tokenizer and the pretrained tiny base models
"""

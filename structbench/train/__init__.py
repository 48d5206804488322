"""Training small networks from scratch with structured linear layers (train-vision, train-lm).

- ``blocks``: the pre-LayerNorm transformer block both models share; its linears (attention
  ``qkv``/``proj``, MLP ``fc1``/``fc2``) are the ones a family replaces.
- ``vit`` / ``gpt``: a small ViT for 28x28 images and a nanoGPT-style byte-level GPT.
- ``data``: Fashion-MNIST (IDX files from the Debian package) with augmentation, and byte
  streams of the Wikipedia text for language modelling.
- ``structure``: swap a model's block linears for a family at a rho, and count the whole
  model's MACs with fvcore (attention matmuls included).
- ``loop``: the one training loop (AdamW, warmup + cosine, clipping, curves, family hooks).
- ``suite``: what the two suites share (config checks, cases, rows).
"""

"""Training small networks from scratch with structured linear layers (train-vision, train-lm,
train-scaling).

- ``blocks``: the pre-LayerNorm transformer block both models share; its linears (attention
  ``qkv``/``proj``, MLP ``fc1``/``fc2``) are the ones a family replaces.
- ``vit`` / ``gpt`` / ``mlp``: a small ViT for 28x28 images, a nanoGPT-style byte-level GPT,
  a plain MLP.
- ``vision`` / ``language``: the ``Task`` of each model on its data (Fashion-MNIST, Wikipedia
  bytes): how to build, feed and score it.
- ``data``: Fashion-MNIST (IDX files from the Debian package) with augmentation, and byte
  streams of the Wikipedia text for language modelling.
- ``structure``: swap a model's block linears for a family at a rho, and count the whole
  model's MACs with fvcore (attention matmuls included).
- ``loop``: the one training loop (AdamW, warmup + cosine, clipping, curves, family hooks).
- ``scaling``: structure-aware training (per-factor learning rates, zero residual outputs).
- ``task``: what the training suites share (config checks, cases, one training run's row).
"""

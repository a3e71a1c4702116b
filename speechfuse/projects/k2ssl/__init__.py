"""k2SSL (Yang et al., "k2SSL: A Faster and Better Framework for Self-Supervised Speech Representation Learning"):
the comparison of its pre-training losses (`pipeline`: CTC from scratch, from a HuBERT-loss and from a CE-loss
pre-trained encoder, with per-layer phone probes). Results and commands: README.md in this folder.
"""

"""k2SSL (Yang et al., "k2SSL: A Faster and Better Framework for Self-Supervised Speech Representation Learning"):
the comparison of pre-training objectives (`pipeline`: CTC from scratch and from encoders pre-trained with the
HuBERT loss, the CE loss, wav2vec 2.0's contrastive objective or WavLM's, with per-layer phone probes). Results and
commands: README.md in this folder.
"""

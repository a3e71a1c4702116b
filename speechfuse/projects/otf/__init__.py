"""OTF (Fu et al., "OTF: Optimal Transport based Fusion of Supervised and Self-Supervised Learning Models for
Automatic Speech Recognition"): the pipeline of its comparison (`pipeline`, the README's quickstart), its
output-level baselines (`baselines`: SBF, the oracle upper bound) and its loss landscape (`landscape`). Results
and commands: README.md in this folder.
"""

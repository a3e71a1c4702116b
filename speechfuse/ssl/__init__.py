"""Self-supervised pre-training's data and diagnostics: k-means targets (JAX k-means over a mesh), their quality,
and probes of what an encoder's layers hold.

`kmeans.fit / assign / inertia`, `targets.mfcc_targets` (iteration 1), `targets.model_targets` (iteration 2) and
`targets.prepare` (a recipe's iteration-1 targets before training); the labels are stored and read by
speechfuse.data.labels. `quality.evaluate` gives PNMI and phone purity, `probe` linear phone probes and attention
statistics per layer.
"""

from speechfuse.ssl import kmeans, probe, quality, targets
from speechfuse.ssl.kmeans import KMeansModel

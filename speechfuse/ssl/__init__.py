"""Self-supervised pre-training: k-means targets (JAX k-means over a mesh), their storage and their quality.

`kmeans.fit / assign / inertia`, `targets.mfcc_targets` (iteration 1) and `targets.model_targets` (iteration 2),
`targets.open_labels` for the input pipeline, `quality.evaluate` for PNMI and phone purity.
"""

from speechfuse.ssl import kmeans, quality, targets
from speechfuse.ssl.kmeans import KMeansModel
from speechfuse.ssl.targets import FrameGrid, Labels, fbank_grid, mfcc_grid, open_labels, wav2vec2_grid

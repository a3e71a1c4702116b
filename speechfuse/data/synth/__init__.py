"""The built-in offline corpus: English read speech synthesised with eSpeak NG (see corpus.py)."""

from speechfuse.data.synth.corpus import SIZES, SPLITS, build_builtin_corpus, fingerprint, plan_corpus

"""Evaluation: WER / CER (metrics), hypothesis confidences (confidence), result files (results), and the ASR
evaluation driver `speechfuse.eval.asr.evaluate_asr(config, workdir, *, splits=None, checkpoint=None)`.

metrics, confidence and results are plain functions the training tasks use too; the driver builds on
speechfuse.train, so it is imported from its module (`from speechfuse.eval.asr import evaluate_asr`), not here.
"""

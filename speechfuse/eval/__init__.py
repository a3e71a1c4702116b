"""Evaluation: WER / CER (metrics), hypothesis confidences (confidence), result files and tables (results,
comparison). Plain functions: the ASR evaluation driver that uses them is a task's (speechfuse.tasks.asr).
"""

"""wav2vec 2.0 / HuBERT / WavLM checkpoints of transformers and fairseq in, and ours out as transformers folders.

  speechfuse-convert hf DIR --out CKPT          a save_pretrained folder (config.json + safetensors or .bin)
  speechfuse-convert fairseq MODEL.pt --out CKPT  a fairseq HuBERT / wav2vec 2.0 checkpoint
  speechfuse-convert to-hf CKPT --out DIR       a converted checkpoint, or a run's exported variables, as a
                                                transformers folder AutoModel.from_pretrained loads

CKPT (convert.store) is a variables directory that `task.init_from` takes (its encoder under params/encoder) with
the encoder's config beside it: fine-tune from it with config.model.encoder set to `encoder_config(CKPT)` (the
command prints the overrides). In Python, `load_pretrained(path)` -> (encoder module, {"params": ...}, config)
for any of the three sources. Needs the `convert` extra (torch for .pt / .bin files and for exports,
transformers for exports).
"""

from speechfuse.convert.api import convert_fairseq, convert_hf, encoder_config, load_pretrained, to_hf

__all__ = ["convert_fairseq", "convert_hf", "encoder_config", "load_pretrained", "to_hf"]

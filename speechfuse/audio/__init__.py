"""Audio: waveform I/O and resampling, Kaldi-compatible log-mel / MFCC front end, normalisation, augmentation."""

from speechfuse.audio.io import AudioReadError, read_audio, resample, write_audio

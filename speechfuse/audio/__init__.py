"""Audio: waveform I/O and resampling, Kaldi-compatible log-mel / MFCC front end, normalisation, augmentation."""

from speechfuse.audio.io import AudioReadError, read_audio, resample, write_audio
from speechfuse.audio.augment import (
    add_noise,
    mix_utterances,
    random_add_noise,
    random_speed_perturb,
    spec_augment,
    speed_perturb,
    speed_perturbed_length,
)
from speechfuse.audio.features import (
    LogMelFrontend,
    add_deltas,
    delta_filters,
    fbank,
    frame_sizes,
    mel_banks,
    mfcc,
    mfcc_39,
    num_frames,
)
from speechfuse.audio.frames import FrameGrid, compose, kaldi_frame_count, kaldi_grid, sample_grid
from speechfuse.audio.normalize import CMVNStats, accumulate, apply_global_cmvn, per_utterance_cmvn

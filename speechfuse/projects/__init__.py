"""One folder per paper: its multi-stage pipeline, its results table and plots, and a README with the paper's
reference, the commands and the measured results.

  otf       Fu et al., "OTF: Optimal Transport based Fusion of Supervised and Self-Supervised Learning Models
            for Automatic Speech Recognition" (the quickstart)
  k2ssl     Yang et al., "k2SSL: A Faster and Better Framework for Self-Supervised Speech Representation
            Learning": masked prediction with the HuBERT and CE losses, then CTC fine-tuning

`pipeline` runs a project's named stages once each, resumably; every model is a recipe (configs/) run by the
generic trainer through speechfuse.run.
"""

"""Models: checkpoint files and loaders, adapters to denoisers, the embedded digits models, and the
network architectures of the paper's checkpoints (:mod:`dode.models.arch`)."""

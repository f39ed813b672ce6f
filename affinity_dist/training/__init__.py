"""Training the affinity U-Net: :mod:`.train` (configuration, run directory, resume),
:mod:`.trainer` (the loop, validation, checkpoints) and :mod:`.data` (volumes, random
crops, validation split)."""

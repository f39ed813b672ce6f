"""The network: :mod:`.config` (the U-Net's configuration, shapes and context),
:mod:`.unet` (the torch module), :mod:`.checkpoint` (the checkpoint format, weights-only
loading) and :mod:`.inference` (per-worker cached models, devices, the forward pass).
Inference never imports the training code."""

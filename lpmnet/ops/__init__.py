"""The compiled operations and their pure-PyTorch references: the selective scan (:mod:`.selective_scan`)
and the causal convolution (:mod:`.causal_conv1d`) of the Mamba blocks, the choice of their backend
(:mod:`.backends`), and the machinery that builds (:mod:`.build`) and loads (:mod:`.cpu`) the CPU kernels
(``csrc``; a method's own kernels live in ``lpmnet/methods/<method>/csrc`` and join the same module)."""

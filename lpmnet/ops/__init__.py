"""The compiled operations and their pure-PyTorch references: the selective scan and the causal
convolution of the Mamba blocks, and the machinery that builds and loads the CPU kernels."""

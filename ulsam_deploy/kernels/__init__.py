"""Fused ULSAM subspace-attention kernel: reference math, Triton kernel, AOT PTX, TensorRT glue.

Importing this package pulls in neither torch nor triton; import the submodules you need:

- :mod:`ulsam_deploy.kernels.reference` - NumPy / torch oracle of the op (the shared contract).
- :mod:`ulsam_deploy.kernels.triton_kernel` - the Triton kernel and its torch launcher.
- :mod:`ulsam_deploy.kernels.plan` - launch planning (tile variant, channel split, grid,
  workspace), mirrored line by line by the C++ launcher.
- :mod:`ulsam_deploy.kernels.aot` - GPU-free PTX generation for the shipped package data.
- :mod:`ulsam_deploy.kernels.qdp_plugin` - ``tensorrt.plugin`` (QDP) AOT registration.
"""

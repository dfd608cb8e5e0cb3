"""File-to-file steps (export, fuse, convert, build-trt): output checks, passes, parity, atomic write, sidecar."""

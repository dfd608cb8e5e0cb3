"""Pure ONNX-to-ONNX passes (simplify, fuse, fp16, int8): ``ModelProto -> (ModelProto, report)``, no files."""

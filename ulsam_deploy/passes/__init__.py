"""Pure ONNX-to-ONNX passes (simplify, fuse, fp16, int8): ``ModelProto -> (ModelProto, report)``, no files."""

INT8_TARGETS = ("tensorrt", "ort")  # the runtime an int8 Q/DQ layout is made for
CALIB_METHODS = ("minmax", "entropy", "percentile")

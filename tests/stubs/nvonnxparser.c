/* The C entry points TensorRT's Python bindings import from libnvonnxparser.so.N. */
#include <stddef.h>
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }

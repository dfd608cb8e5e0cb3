/* The C entry points TensorRT's Python bindings import from libnvinfer.so.N, returning nothing:
 * enough for `import tensorrt` to load TensorRT's real classes (no engine can be built). */
#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
void *getPluginRegistry(void) { return NULL; }

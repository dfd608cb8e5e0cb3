/* The C entry point TensorRT's Python bindings import from libnvinfer_plugin.so.N. */
#include <stdbool.h>
bool initLibNvInferPlugins(void *logger, const char *plugin_namespace) { return true; }

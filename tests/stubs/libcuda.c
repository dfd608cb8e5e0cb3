/* A stand-in for the CUDA driver (libcuda.so.1) on host memory, for tests of our ctypes code.
 * "Device" memory is malloc'd, copies are memcpy, streams run synchronously, events read
 * CLOCK_MONOTONIC. Knobs (read at each call): ULSAM_STUB_CUDA_DEVICES (default 1),
 * ULSAM_STUB_CUDA_INIT (CUresult cuInit returns, default 0), ULSAM_STUB_CUDA_MEM_LIMIT (bytes of
 * device memory before CUDA_ERROR_OUT_OF_MEMORY). Calls that need a context fail with
 * CUDA_ERROR_INVALID_CONTEXT unless one is current in the calling thread. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, NO_DEVICE = 100,
       INVALID_DEVICE = 101, INVALID_CONTEXT = 201, INVALID_HANDLE = 400 };

static int initialized = 0;
static int primary_refs = 0;
static long live_device = 0, live_host = 0, live_events = 0, live_streams = 0;
static size_t device_bytes = 0;
static __thread void *current_ctx = 0;
static int primary_ctx_token = 0x5eed;

static long knob(const char *name, long fallback) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, 0, 10) : fallback;
}
static int devices(void) { return (int)knob("ULSAM_STUB_CUDA_DEVICES", 1); }
static int need_ctx(void) {
    if (!initialized) return NOT_INITIALIZED;
    return current_ctx == &primary_ctx_token ? OK : INVALID_CONTEXT;
}

int cuInit(unsigned flags) {
    int code = (int)knob("ULSAM_STUB_CUDA_INIT", 0);
    if (flags != 0) return INVALID_VALUE;
    if (code == 0) initialized = 1;
    return code;
}
int cuDriverGetVersion(int *v) { if (!v) return INVALID_VALUE; *v = 12060; return OK; }
int cuDeviceGetCount(int *n) {
    if (!initialized) return NOT_INITIALIZED;
    *n = devices();
    return OK;
}
int cuDeviceGet(int *dev, int ordinal) {
    if (!initialized) return NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= devices()) return INVALID_DEVICE;
    *dev = ordinal;
    return OK;
}
int cuDeviceGetName(char *name, int len, int dev) {
    if (dev < 0 || dev >= devices()) return INVALID_DEVICE;
    strncpy(name, "Stub GPU (host memory)", (size_t)len - 1);
    name[len - 1] = 0;
    return OK;
}
int cuDeviceGetAttribute(int *value, int attr, int dev) {
    if (dev < 0 || dev >= devices()) return INVALID_DEVICE;
    switch (attr) {
    case 75: *value = 8; return OK;  /* compute capability major */
    case 76: *value = 7; return OK;  /* minor */
    case 18: *value = 1; return OK;  /* integrated */
    default: return INVALID_VALUE;
    }
}
int cuDeviceTotalMem_v2(size_t *bytes, int dev) {
    if (dev < 0 || dev >= devices()) return INVALID_DEVICE;
    *bytes = (size_t)8 << 30;
    return OK;
}
int cuDevicePrimaryCtxRetain(void **ctx, int dev) {
    if (!initialized) return NOT_INITIALIZED;
    if (dev < 0 || dev >= devices()) return INVALID_DEVICE;
    primary_refs++;
    *ctx = &primary_ctx_token;
    return OK;
}
int cuDevicePrimaryCtxRelease_v2(int dev) {
    if (primary_refs <= 0) return INVALID_CONTEXT;
    primary_refs--;
    return OK;
}
int cuCtxSetCurrent(void *ctx) {
    if (ctx && ctx != &primary_ctx_token) return INVALID_CONTEXT;
    current_ctx = ctx;
    return OK;
}
int cuMemAlloc_v2(uint64_t *ptr, size_t bytes) {
    int code = need_ctx();
    if (code) return code;
    if (bytes == 0) return INVALID_VALUE;
    if (device_bytes + bytes > (size_t)knob("ULSAM_STUB_CUDA_MEM_LIMIT", 1L << 40)) return OUT_OF_MEMORY;
    size_t *block = malloc(bytes + sizeof(size_t) * 2);
    if (!block) return OUT_OF_MEMORY;
    block[0] = bytes;
    device_bytes += bytes;
    live_device++;
    *ptr = (uint64_t)(uintptr_t)(block + 2);
    return OK;
}
int cuMemFree_v2(uint64_t ptr) {
    if (!ptr) return INVALID_VALUE;
    size_t *block = (size_t *)(uintptr_t)ptr - 2;
    device_bytes -= block[0];
    live_device--;
    free(block);
    return OK;
}
int cuMemHostAlloc(void **ptr, size_t bytes, unsigned flags) {
    int code = need_ctx();
    if (code) return code;
    *ptr = malloc(bytes ? bytes : 1);
    live_host++;
    return *ptr ? OK : OUT_OF_MEMORY;
}
int cuMemFreeHost(void *ptr) { free(ptr); live_host--; return OK; }
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, void *stream) {
    int code = need_ctx();
    if (code) return code;
    if (!stream) return INVALID_HANDLE;  /* the runner never uses the legacy default stream */
    memcpy((void *)(uintptr_t)dst, src, bytes);
    return OK;
}
int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, void *stream) {
    int code = need_ctx();
    if (code) return code;
    if (!stream) return INVALID_HANDLE;
    memcpy(dst, (const void *)(uintptr_t)src, bytes);
    return OK;
}
int cuStreamCreate(void **stream, unsigned flags) {
    int code = need_ctx();
    if (code) return code;
    *stream = malloc(1);
    live_streams++;
    return OK;
}
int cuStreamSynchronize(void *stream) { return stream ? OK : INVALID_HANDLE; }
int cuStreamDestroy_v2(void *stream) { free(stream); live_streams--; return OK; }
int cuEventCreate(void **event, unsigned flags) {
    int code = need_ctx();
    if (code) return code;
    double *t = calloc(2, sizeof(double));  /* [recorded?, seconds] */
    live_events++;
    *event = t;
    return OK;
}
int cuEventRecord(void *event, void *stream) {
    struct timespec ts;
    if (!event || !stream) return INVALID_HANDLE;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ((double *)event)[0] = 1;
    ((double *)event)[1] = ts.tv_sec + ts.tv_nsec * 1e-9;
    return OK;
}
int cuEventSynchronize(void *event) { return event ? OK : INVALID_HANDLE; }
int cuEventElapsedTime(float *ms, void *start, void *end) {
    if (!start || !end) return INVALID_HANDLE;
    if (!((double *)start)[0] || !((double *)end)[0]) return INVALID_HANDLE;
    *ms = (float)((((double *)end)[1] - ((double *)start)[1]) * 1e3);
    return OK;
}
int cuEventDestroy_v2(void *event) { free(event); live_events--; return OK; }
int cuGetErrorName(int code, const char **name) {
    switch (code) {
    case OK: *name = "CUDA_SUCCESS"; return OK;
    case INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return OK;
    case OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return OK;
    case NOT_INITIALIZED: *name = "CUDA_ERROR_NOT_INITIALIZED"; return OK;
    case NO_DEVICE: *name = "CUDA_ERROR_NO_DEVICE"; return OK;
    case INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; return OK;
    case INVALID_CONTEXT: *name = "CUDA_ERROR_INVALID_CONTEXT"; return OK;
    case INVALID_HANDLE: *name = "CUDA_ERROR_INVALID_HANDLE"; return OK;
    default: *name = 0; return INVALID_VALUE;
    }
}

/* for the tests: what is still allocated */
long stub_live(int what) {
    switch (what) {
    case 0: return live_device;
    case 1: return live_host;
    case 2: return live_events;
    case 3: return live_streams;
    case 4: return primary_refs;
    default: return -1;
    }
}

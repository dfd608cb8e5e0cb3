// Stand-in for libcuda.so.1 in host-only tests (load it with ULSAM_SA_CUDA_DRIVER=<this .so>).
//
// It implements the driver entry points the launcher uses, counts every call, records the last
// launch (grid, block, shared memory, the bytes of every kernel argument) and the last host-to-
// device copy, and judges images the way a CUDA driver of a configurable version would:
//   cubin  ELF, e_machine 190; ELF ABI 8 needs a CUDA >= 13.0 driver; runs when the cubin's sm
//          has the device's major and a minor <= the device's;
//   PTX    `.version X.Y` must not exceed the driver's ISA (12.0 -> 8.0 ... 13.0 -> 9.0), else
//          CUDA_ERROR_UNSUPPORTED_PTX_VERSION; `.target sm_XY` must be <= the device.
// This is a model written from NVIDIA's compatibility rules, not a driver: it proves the
// launcher's logic, not that a real driver accepts the images. Built with ULSAM_STUB_NO_CTX_ID it
// lacks cuCtxGetId (drivers older than CUDA 12.0). Controls: the ulsam_stub_* functions.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace
{

typedef int CUresult;
constexpr CUresult kSuccess = 0;
constexpr CUresult kOutOfMemory = 2;
constexpr CUresult kInvalidValue = 1;
constexpr CUresult kInvalidContext = 201;
constexpr CUresult kInvalidImage = 200;
constexpr CUresult kNoBinaryForGpu = 209;
constexpr CUresult kInvalidPtx = 218;
constexpr CUresult kUnsupportedPtxVersion = 222;
constexpr CUresult kNotFound = 500;

struct Module
{
    int kind; // 1 cubin, 2 PTX
    int arch;
    std::string image; // a copy (the driver keeps nothing of the caller's buffer either)
};

struct Function
{
    Module* module;
};

struct State
{
    std::mutex mutex;
    std::map<std::string, long> counts;
    int cc{86};
    int smCount{16};
    int l2Bytes{4 << 20};
    int driverVersion{12000};
    void* ctx{reinterpret_cast<void*>(0x1000)};
    unsigned long long ctxId{1};
    bool rejectCubins{false};
    bool failAlloc{false};
    std::vector<int> paramSizes;
    unsigned launch[7]{};
    void* launchStream{nullptr};
    int launchKind{0};
    std::vector<unsigned char> launchArgs;
    std::vector<unsigned char> lastHtoD;
    unsigned long long lastHtoDDst{0};
    unsigned long long nextPtr{0x7f0000000000ULL};
    int lastModuleKind{0};
    int lastModuleArch{0};
};

State& S()
{
    static State s;
    return s;
}

void count(char const* name)
{
    std::lock_guard<std::mutex> lock(S().mutex);
    ++S().counts[name];
}

int maxIsa(int driverVersion)
{
    // PTX ISA release history: CUDA 12.0 -> 8.0, 12.1 -> 8.1 ... 12.5/12.6 -> 8.5, 12.8 -> 8.7,
    // 12.9 -> 8.8, 13.0 -> 9.0.
    int const major = driverVersion / 1000, minor = (driverVersion % 1000) / 10;
    if (major >= 13)
        return 90 + (major - 13) * 10 + minor;
    if (major == 12)
        return minor <= 5 ? 80 + minor : 80 + minor - 1;
    if (major == 11)
        return 70 + minor;
    return 0;
}

void setLog(unsigned n, int* opts, void** vals, std::string const& msg)
{
    char* buf = nullptr;
    size_t size = 0;
    for (unsigned i = 0; i < n; ++i)
    {
        if (opts[i] == 5) // CU_JIT_ERROR_LOG_BUFFER
            buf = static_cast<char*>(vals[i]);
        else if (opts[i] == 6) // CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES
            size = static_cast<size_t>(reinterpret_cast<uintptr_t>(vals[i]));
    }
    if (buf && size)
        std::snprintf(buf, size, "%s", msg.c_str());
}

} // namespace

extern "C" {

// ---- controls for tests ----
void ulsam_stub_set_device(int cc, int smCount, int l2Bytes)
{
    S().cc = cc;
    S().smCount = smCount;
    S().l2Bytes = l2Bytes;
}
void ulsam_stub_set_driver_version(int v)
{
    S().driverVersion = v;
}
void ulsam_stub_set_context(void* ctx, unsigned long long id)
{
    S().ctx = ctx;
    S().ctxId = id;
}
void ulsam_stub_set_failures(int rejectCubins, int failAlloc)
{
    S().rejectCubins = rejectCubins != 0;
    S().failAlloc = failAlloc != 0;
}
void ulsam_stub_set_param_sizes(int const* sizes, int n)
{
    S().paramSizes.assign(sizes, sizes + n);
}
long ulsam_stub_count(char const* name)
{
    std::lock_guard<std::mutex> lock(S().mutex);
    auto it = S().counts.find(name);
    return it == S().counts.end() ? 0 : it->second;
}
long ulsam_stub_total_calls(void)
{
    std::lock_guard<std::mutex> lock(S().mutex);
    long n = 0;
    for (auto const& kv : S().counts)
        n += kv.second;
    return n;
}
// grid xyz, block xyz, shared bytes; kind of the launched module; copies the argument bytes.
int ulsam_stub_last_launch(unsigned* dims7, int* kind, void** stream, unsigned char* args, int cap)
{
    std::memcpy(dims7, S().launch, sizeof(S().launch));
    *kind = S().launchKind;
    *stream = S().launchStream;
    int const n = static_cast<int>(S().launchArgs.size());
    std::memcpy(args, S().launchArgs.data(), static_cast<size_t>(n < cap ? n : cap));
    return n;
}
int ulsam_stub_last_htod(unsigned long long* dst, unsigned char* data, int cap)
{
    *dst = S().lastHtoDDst;
    int const n = static_cast<int>(S().lastHtoD.size());
    std::memcpy(data, S().lastHtoD.data(), static_cast<size_t>(n < cap ? n : cap));
    return n;
}
void ulsam_stub_last_module(int* kind, int* arch)
{
    *kind = S().lastModuleKind;
    *arch = S().lastModuleArch;
}
int ulsam_stub_has_ctx_id(void)
{
#ifdef ULSAM_STUB_NO_CTX_ID
    return 0;
#else
    return 1;
#endif
}

// ---- driver entry points ----
CUresult cuInit(unsigned)
{
    count("cuInit");
    return kSuccess;
}
CUresult cuDriverGetVersion(int* v)
{
    count("cuDriverGetVersion");
    *v = S().driverVersion;
    return kSuccess;
}
CUresult cuGetErrorString(CUresult r, char const** s)
{
    switch (r)
    {
    case kOutOfMemory: *s = "out of memory (stub)"; break;
    case kNoBinaryForGpu: *s = "no kernel image is available for execution on the device (stub)"; break;
    case kInvalidImage: *s = "device kernel image is invalid (stub)"; break;
    case kUnsupportedPtxVersion: *s = "the provided PTX was compiled with an unsupported toolchain (stub)"; break;
    case kInvalidPtx: *s = "a PTX JIT compilation failed (stub)"; break;
    default: *s = "stub error";
    }
    return kSuccess;
}
CUresult cuCtxGetCurrent(void** ctx)
{
    count("cuCtxGetCurrent");
    *ctx = S().ctx;
    return kSuccess;
}
#ifndef ULSAM_STUB_NO_CTX_ID
CUresult cuCtxGetId(void* ctx, unsigned long long* id)
{
    count("cuCtxGetId");
    if (ctx != S().ctx || !ctx)
        return kInvalidContext;
    *id = S().ctxId;
    return kSuccess;
}
#endif
CUresult cuCtxGetDevice(int* dev)
{
    count("cuCtxGetDevice");
    *dev = 0;
    return S().ctx ? kSuccess : kInvalidContext;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int)
{
    count("cuDeviceGetAttribute");
    switch (attr)
    {
    case 75: *v = S().cc / 10; break;  // COMPUTE_CAPABILITY_MAJOR
    case 76: *v = S().cc % 10; break;  // COMPUTE_CAPABILITY_MINOR
    case 16: *v = S().smCount; break;  // MULTIPROCESSOR_COUNT
    case 38: *v = S().l2Bytes; break;  // L2_CACHE_SIZE
    default: *v = 0;
    }
    return kSuccess;
}
CUresult cuModuleLoadDataEx(void** mod, void const* image, unsigned n, int* opts, void** vals)
{
    count("cuModuleLoadDataEx");
    auto const* p = static_cast<unsigned char const*>(image);
    int const cc = S().cc;
    if (std::memcmp(p, "\x7f" "ELF", 4) == 0)
    {
        uint16_t machine;
        uint32_t flags;
        std::memcpy(&machine, p + 18, 2);
        std::memcpy(&flags, p + 48, 4);
        int const abi = p[8];
        int const sm = abi >= 8 ? static_cast<int>((flags >> 8) & 0xff) : static_cast<int>(flags & 0xff);
        if (machine != 190)
            return kInvalidImage;
        if (abi >= 8 && S().driverVersion < 13000)
        {
            setLog(n, opts, vals, "ELF ABI version 8 needs a CUDA 13 driver");
            return kNoBinaryForGpu;
        }
        if (S().rejectCubins || sm / 10 != cc / 10 || sm > cc)
            return kNoBinaryForGpu;
        // the ELF's extent: the end of its section or program header table, whichever is last
        uint64_t phoff, shoff;
        uint16_t phentsize, phnum, shentsize, shnum;
        std::memcpy(&phoff, p + 32, 8);
        std::memcpy(&shoff, p + 40, 8);
        std::memcpy(&phentsize, p + 54, 2);
        std::memcpy(&phnum, p + 56, 2);
        std::memcpy(&shentsize, p + 58, 2);
        std::memcpy(&shnum, p + 60, 2);
        uint64_t const a = phoff + uint64_t(phentsize) * phnum, b = shoff + uint64_t(shentsize) * shnum;
        auto* m = new Module{1, sm, std::string(reinterpret_cast<char const*>(p), a > b ? a : b)};
        *mod = m;
        S().lastModuleKind = 1;
        S().lastModuleArch = sm;
        return kSuccess;
    }
    std::string const text(static_cast<char const*>(image));
    int major = 0, minor = 0, target = 0;
    char const* v = std::strstr(text.c_str(), "\n.version ");
    char const* t = std::strstr(text.c_str(), "\n.target sm_");
    if (!v || !t || std::sscanf(v, "\n.version %d.%d", &major, &minor) != 2 || std::sscanf(t, "\n.target sm_%d", &target) != 1)
    {
        setLog(n, opts, vals, "not PTX");
        return kInvalidImage;
    }
    if (major * 10 + minor > maxIsa(S().driverVersion))
    {
        setLog(n, opts, vals, "ptxas application ptx input, line 1; fatal : Unsupported .version " + std::to_string(major)
            + "." + std::to_string(minor) + "; current version is '" + std::to_string(maxIsa(S().driverVersion) / 10) + "."
            + std::to_string(maxIsa(S().driverVersion) % 10) + "'");
        return kUnsupportedPtxVersion;
    }
    if (target > cc)
    {
        setLog(n, opts, vals, "SM version specified by .target is higher than default SM version assumed");
        return kInvalidPtx;
    }
    *mod = new Module{2, target, text};
    S().lastModuleKind = 2;
    S().lastModuleArch = target;
    return kSuccess;
}
CUresult cuModuleUnload(void* mod)
{
    count("cuModuleUnload");
    delete static_cast<Module*>(mod);
    return kSuccess;
}
CUresult cuModuleGetFunction(void** fn, void* mod, char const* name)
{
    count("cuModuleGetFunction");
    auto* m = static_cast<Module*>(mod);
    if (m->image.find(name) == std::string::npos)
        return kNotFound;
    *fn = new Function{m};
    return kSuccess;
}
CUresult cuFuncSetAttribute(void*, int, int)
{
    count("cuFuncSetAttribute");
    return kSuccess;
}
CUresult cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
    unsigned shared, void* stream, void** params, void** extra)
{
    count("cuLaunchKernel");
    if (!fn || !params || extra)
        return kInvalidValue;
    State& s = S();
    unsigned const dims[7] = {gx, gy, gz, bx, by, bz, shared};
    std::memcpy(s.launch, dims, sizeof(dims));
    s.launchStream = stream;
    s.launchKind = static_cast<Function*>(fn)->module->kind;
    s.launchArgs.clear();
    for (size_t i = 0; i < s.paramSizes.size(); ++i)
    {
        auto const* a = static_cast<unsigned char const*>(params[i]);
        s.launchArgs.insert(s.launchArgs.end(), a, a + s.paramSizes[i]);
    }
    return kSuccess;
}
CUresult cuMemAlloc_v2(unsigned long long* ptr, size_t bytes)
{
    count("cuMemAlloc_v2");
    if (S().failAlloc)
        return kOutOfMemory;
    *ptr = S().nextPtr;
    S().nextPtr += (bytes + 0xfffff) & ~static_cast<size_t>(0xfffff);
    return kSuccess;
}
CUresult cuMemFree_v2(unsigned long long)
{
    count("cuMemFree_v2");
    return kSuccess;
}
CUresult cuMemcpyHtoD_v2(unsigned long long dst, void const* src, size_t bytes)
{
    count("cuMemcpyHtoD_v2");
    auto const* p = static_cast<unsigned char const*>(src);
    S().lastHtoD.assign(p, p + bytes);
    S().lastHtoDDst = dst;
    return kSuccess;
}
CUresult cuMemcpyDtoH_v2(void*, unsigned long long, size_t)
{
    count("cuMemcpyDtoH_v2");
    return kSuccess;
}
CUresult cuDeviceGet(int* dev, int ordinal)
{
    count("cuDeviceGet");
    *dev = ordinal;
    return ordinal == 0 ? kSuccess : kInvalidValue;
}
CUresult cuDeviceGetName(char* name, int len, int)
{
    count("cuDeviceGetName");
    std::snprintf(name, static_cast<size_t>(len), "ulsam stub sm_%d", S().cc);
    return kSuccess;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int)
{
    count("cuDevicePrimaryCtxRetain");
    *ctx = S().ctx;
    return kSuccess;
}
CUresult cuCtxSetCurrent(void*)
{
    count("cuCtxSetCurrent");
    return kSuccess;
}
CUresult cuCtxSynchronize()
{
    count("cuCtxSynchronize");
    return kSuccess;
}
CUresult cuStreamSynchronize(void*)
{
    count("cuStreamSynchronize");
    return kSuccess;
}

} // extern "C"

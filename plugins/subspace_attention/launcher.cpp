// ULSAM fused subspace-attention launcher: embedded kernel images + CUDA driver API via dlopen.
// See launcher.h for the contract and docs/kernel.md for the design.
#include "launcher.h"
#include "image_table.h"

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

namespace
{

// ------------------------------------------------------------------ plan (mirror of plan.py)
constexpr int64_t kBigTile = 1024;
constexpr int64_t kSmallTile = 256;
constexpr int kBigWarps = 8;
constexpr int kSmallWarps = 2;
constexpr int kBlockWs[] = {8, 16};
constexpr int kNumBlockWs = 2;
constexpr int64_t kMaxSplit = 16;
constexpr int64_t kSplitCtasPerSm = 2;
constexpr int64_t kCtasPerSmBig = 2;
constexpr int64_t kCtasPerSmSmall = 4;
constexpr int64_t kDefaultSmCount = 132;
constexpr int64_t kDefaultL2Bytes = 50LL * 1024 * 1024;
constexpr int64_t kWsMinRows = 1024;
constexpr int64_t kWsL2RefBytes = 32LL * 1024 * 1024;

struct Variant
{
    int blockW, rows, blockC, outC, numWarps;
};

Variant makeVariant(int blockW, bool small)
{
    int64_t const tile = small ? kSmallTile : kBigTile;
    int const rowTile = blockW == 8 ? 64 : 256;
    int const blockC = static_cast<int>(std::max<int64_t>(1, tile / rowTile));
    return Variant{blockW, rowTile / blockW, blockC, blockC, small ? kSmallWarps : kBigWarps};
}

// Same order as plan.VARIANTS: for block_w in BLOCK_WS, for small in (False, True).
Variant const kVariants[] = {
    makeVariant(8, false), makeVariant(8, true), makeVariant(16, false), makeVariant(16, true)};
constexpr int kNumVariants = 4;

int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

int64_t nextPow2(int64_t v)
{
    int64_t p = 1;
    while (p < v)
        p *= 2;
    return p;
}

int64_t elemBytes(int dtype)
{
    return dtype == ULSAM_SA_FP16 ? 2 : 4;
}

bool validShape(int dtype, int N, int C, int H, int W, int groups)
{
    return (dtype == ULSAM_SA_FP32 || dtype == ULSAM_SA_FP16) && N >= 1 && C >= 1 && H >= 1 && W >= 1
        && groups >= 1 && C % groups == 0;
}

int selectVariant(int64_t g, int64_t w)
{
    int64_t const bw = std::min<int64_t>(kBlockWs[kNumBlockWs - 1], std::max<int64_t>(kBlockWs[0], nextPow2(w)));
    int idx = 0;
    for (int i = 0; i < kNumBlockWs; ++i)
        if (kBlockWs[i] == bw)
            idx = i;
    int const big = idx * 2;
    return (2 * g < kVariants[big].blockC) ? big + 1 : big;
}

size_t workspaceBytes(int dtype, int64_t n, int64_t c, int64_t h, int64_t w, int64_t groups)
{
    int64_t const hw = h * w;
    int64_t const perHw = kWsL2RefBytes / ((c / groups) * elemBytes(dtype));
    int64_t const a = n * groups * kMaxSplit * hw * 4;
    int64_t const b = std::max<int64_t>(kWsMinRows * hw * 4, perHw * 4 + hw * 4);
    return static_cast<size_t>(std::min(a, b));
}

// ------------------------------------------------------------------ error reporting
thread_local std::string tLastError;

int fail(int status, char const* fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    tLastError = buf;
    return status;
}

// ------------------------------------------------------------------ driver API through dlopen
// Unversioned / _v2 names that every driver since CUDA 11 exports (deliberately not the header
// macros, which may point at newer symbol versions than an older driver such as JetPack 6 has).
struct Driver
{
    bool loaded{false};
    std::string error;
    CUresult (*cuInit)(unsigned int){nullptr};
    CUresult (*cuDriverGetVersion)(int*){nullptr};
    CUresult (*cuCtxGetCurrent)(CUcontext*){nullptr};
    CUresult (*cuCtxGetDevice)(CUdevice*){nullptr};
    CUresult (*cuCtxGetId)(CUcontext, unsigned long long*){nullptr}; // optional: CUDA >= 12.0
    CUresult (*cuDeviceGetAttribute)(int*, CUdevice_attribute, CUdevice){nullptr};
    CUresult (*cuModuleLoadDataEx)(CUmodule*, void const*, unsigned int, CUjit_option*, void**){nullptr};
    CUresult (*cuModuleUnload)(CUmodule){nullptr};
    CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, char const*){nullptr};
    CUresult (*cuFuncSetAttribute)(CUfunction, CUfunction_attribute, int){nullptr};
    CUresult (*cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
        unsigned int, unsigned int, CUstream, void**, void**){nullptr};
    CUresult (*cuGetErrorString)(CUresult, char const**){nullptr};
    CUresult (*cuMemAlloc)(CUdeviceptr*, size_t){nullptr};
    CUresult (*cuMemFree)(CUdeviceptr){nullptr};
    CUresult (*cuMemcpyHtoD)(CUdeviceptr, void const*, size_t){nullptr};
    CUresult (*cuMemcpyDtoH)(void*, CUdeviceptr, size_t){nullptr};
    CUresult (*cuDeviceGet)(CUdevice*, int){nullptr};
    CUresult (*cuDeviceGetName)(char*, int, CUdevice){nullptr};
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice){nullptr};
    CUresult (*cuCtxSetCurrent)(CUcontext){nullptr};
    CUresult (*cuCtxSynchronize)(){nullptr};
    CUresult (*cuStreamSynchronize)(CUstream){nullptr};
};

Driver& driver()
{
    static Driver d;
    static std::once_flag once;
    std::call_once(once, [] {
        char const* override = std::getenv("ULSAM_SA_CUDA_DRIVER");
        char const* defaults[] = {"libcuda.so.1", "libcuda.so"};
        char const* only[] = {override};
        bool const useOverride = override && *override;
        char const* const* names = useOverride ? only : defaults;
        int const count = useOverride ? 1 : 2;
        void* h = nullptr;
        std::string firstError;
        for (int i = 0; i < count && !h; ++i)
        {
            h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
            if (!h && firstError.empty())
            {
                char const* e = dlerror();
                firstError = e ? e : "unknown error";
            }
        }
        if (!h)
        {
            d.error = "cannot load the CUDA driver: " + firstError + " (no NVIDIA driver on this machine?)";
            return;
        }
        bool ok = true;
        auto sym = [&](auto& fn, char const* name, bool required = true) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
            if (!fn && required)
            {
                ok = false;
                d.error = std::string("CUDA driver lacks symbol ") + name;
            }
        };
        sym(d.cuInit, "cuInit");
        sym(d.cuDriverGetVersion, "cuDriverGetVersion");
        sym(d.cuCtxGetCurrent, "cuCtxGetCurrent");
        sym(d.cuCtxGetDevice, "cuCtxGetDevice");
        sym(d.cuCtxGetId, "cuCtxGetId", false);
        sym(d.cuDeviceGetAttribute, "cuDeviceGetAttribute");
        sym(d.cuModuleLoadDataEx, "cuModuleLoadDataEx");
        sym(d.cuModuleUnload, "cuModuleUnload");
        sym(d.cuModuleGetFunction, "cuModuleGetFunction");
        sym(d.cuFuncSetAttribute, "cuFuncSetAttribute");
        sym(d.cuLaunchKernel, "cuLaunchKernel");
        sym(d.cuGetErrorString, "cuGetErrorString");
        sym(d.cuMemAlloc, "cuMemAlloc_v2");
        sym(d.cuMemFree, "cuMemFree_v2");
        sym(d.cuMemcpyHtoD, "cuMemcpyHtoD_v2");
        sym(d.cuMemcpyDtoH, "cuMemcpyDtoH_v2");
        sym(d.cuDeviceGet, "cuDeviceGet");
        sym(d.cuDeviceGetName, "cuDeviceGetName");
        sym(d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
        sym(d.cuCtxSetCurrent, "cuCtxSetCurrent");
        sym(d.cuCtxSynchronize, "cuCtxSynchronize");
        sym(d.cuStreamSynchronize, "cuStreamSynchronize");
        if (ok && d.cuInit(0) != CUDA_SUCCESS)
        {
            ok = false;
            d.error = "cuInit failed (no usable GPU?)";
        }
        d.loaded = ok;
    });
    return d;
}

char const* cuErr(Driver& d, CUresult r)
{
    char const* s = nullptr;
    if (d.cuGetErrorString && d.cuGetErrorString(r, &s) == CUDA_SUCCESS && s)
        return s;
    return "unknown CUDA error";
}

// ------------------------------------------------------------------ per-context state
struct DeviceInfo
{
    int cc{0};
    int smCount{0};
    long long l2Bytes{0};
};

struct LoadedKernel
{
    CUmodule module{nullptr};
    CUfunction fn{nullptr};
    int numWarps{0};
    int sharedBytes{0};
    int arch{0};  // architecture of the loaded image (cubin arch or PTX .target)
    int image{ULSAM_SA_IMAGE_NONE};
};

struct ContextState
{
    DeviceInfo info;
    bool prepared[2]{false, false};
    LoadedKernel kernels[2][kNumVariants];
};

std::mutex gMutex;         // guards gContexts (held only for look-ups and inserts)
std::mutex gPrepareMutex;  // serializes module loading
std::map<uint64_t, ContextState> gContexts; // key: ctxKey(); modules live as long as their context
std::atomic<int> gImagePolicy{ULSAM_SA_IMAGES_AUTO};

// The current context and its cache key (NO_DRIVER when the driver is not loaded): the unique context ID
// when the driver has cuCtxGetId, else the CUcontext pointer (a context re-created at the same address
// would then reuse stale state).
int currentContext(Driver& d, CUcontext* ctxOut, uint64_t* key)
{
    if (!d.loaded)
        return fail(ULSAM_SA_ERR_NO_DRIVER, "%s", d.error.c_str());
    CUcontext ctx = nullptr;
    CUresult r = d.cuCtxGetCurrent(&ctx);
    if (r != CUDA_SUCCESS || ctx == nullptr)
        return fail(ULSAM_SA_ERR_NO_CONTEXT,
            "no CUDA context is current on this thread (create one first, e.g. cudaSetDevice + cudaFree(0))");
    if (d.cuCtxGetId)
    {
        unsigned long long id = 0;
        if ((r = d.cuCtxGetId(ctx, &id)) != CUDA_SUCCESS)
            return fail(ULSAM_SA_ERR_CUDA, "cuCtxGetId: %s", cuErr(d, r));
        *key = id;
    }
    else
        *key = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ctx));
    if (ctxOut)
        *ctxOut = ctx;
    return ULSAM_SA_OK;
}

int queryDevice(Driver& d, DeviceInfo* info)
{
    CUdevice dev;
    CUresult r = d.cuCtxGetDevice(&dev);
    if (r != CUDA_SUCCESS)
        return fail(ULSAM_SA_ERR_CUDA, "cuCtxGetDevice: %s", cuErr(d, r));
    int major = 0, minor = 0, sms = 0, l2 = 0;
    d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    d.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    d.cuDeviceGetAttribute(&l2, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, dev);
    *info = DeviceInfo{major * 10 + minor, sms, l2};
    return ULSAM_SA_OK;
}

// Image choice (twin of aot.find_cubin / aot.find_kernel): the cubin of the same arch, else of
// the highest lower minor of the same major (SASS is binary compatible upwards within a major);
// the PTX of the highest arch <= the device's (PTX JIT-compiles forward).
void selectImages(int cc, int dtype, int variant, int* cubinIdx, int* ptxIdx)
{
    *cubinIdx = -1;
    *ptxIdx = -1;
    for (int i = 0; i < ulsam_images::kNumKernels; ++i)
    {
        auto const& k = ulsam_images::kKernels[i];
        if (k.dtype != dtype || k.variant != variant || k.arch > cc)
            continue;
        if (*ptxIdx < 0 || k.arch > ulsam_images::kKernels[*ptxIdx].arch)
            *ptxIdx = i;
        if (k.cubin && k.arch / 10 == cc / 10 && (*cubinIdx < 0 || k.arch > ulsam_images::kKernels[*cubinIdx].arch))
            *cubinIdx = i;
    }
}

// cuModuleLoadDataEx + cuModuleGetFunction for one image; on failure fills `why`.
bool loadImage(Driver& d, void const* image, int kernelIdx, LoadedKernel* out, std::string* why)
{
    auto const& k = ulsam_images::kKernels[kernelIdx];
    char errLog[4096] = {0};
    CUjit_option opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void* vals[] = {errLog, reinterpret_cast<void*>(static_cast<uintptr_t>(sizeof(errLog)))};
    CUmodule mod = nullptr;
    CUresult r = d.cuModuleLoadDataEx(&mod, image, 2, opts, vals);
    char buf[4608];
    if (r != CUDA_SUCCESS)
    {
        std::snprintf(buf, sizeof(buf), "cuModuleLoadDataEx: %s%s%s", cuErr(d, r), errLog[0] ? ": " : "", errLog);
        *why = buf;
        return false;
    }
    CUfunction fn = nullptr;
    if ((r = d.cuModuleGetFunction(&fn, mod, ulsam_images::kEntryName)) != CUDA_SUCCESS)
    {
        std::snprintf(buf, sizeof(buf), "cuModuleGetFunction(%s): %s", ulsam_images::kEntryName, cuErr(d, r));
        *why = buf;
        d.cuModuleUnload(mod);
        return false;
    }
    if (k.sharedBytes > 48 * 1024
        && (r = d.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, k.sharedBytes))
            != CUDA_SUCCESS)
    {
        std::snprintf(buf, sizeof(buf), "cuFuncSetAttribute(shared=%d): %s", k.sharedBytes, cuErr(d, r));
        *why = buf;
        d.cuModuleUnload(mod);
        return false;
    }
    out->module = mod;
    out->fn = fn;
    out->numWarps = k.numWarps;
    out->sharedBytes = k.sharedBytes;
    return true;
}

int loadKernel(Driver& d, int cc, int dtype, int variant, LoadedKernel* out)
{
    int cubinIdx, ptxIdx;
    selectImages(cc, dtype, variant, &cubinIdx, &ptxIdx);
    int const policy = gImagePolicy.load();
    std::string cubinWhy, ptxWhy;
    if (policy != ULSAM_SA_IMAGES_PTX_ONLY && cubinIdx >= 0)
    {
        if (loadImage(d, ulsam_images::kKernels[cubinIdx].cubin, cubinIdx, out, &cubinWhy))
        {
            out->arch = ulsam_images::kKernels[cubinIdx].arch;
            out->image = ULSAM_SA_IMAGE_CUBIN;
            return ULSAM_SA_OK;
        }
    }
    else if (policy == ULSAM_SA_IMAGES_CUBIN_ONLY)
        return fail(ULSAM_SA_ERR_NO_KERNEL, "no embedded cubin for sm_%d (dtype %d, variant %d) and PTX JIT is disabled",
            cc, dtype, variant);
    if (policy == ULSAM_SA_IMAGES_CUBIN_ONLY)
        return fail(ULSAM_SA_ERR_MODULE_LOAD, "the sm_%d cubin did not load (%s) and PTX JIT is disabled",
            ulsam_images::kKernels[cubinIdx].arch, cubinWhy.c_str());
    if (ptxIdx < 0)
        return fail(ULSAM_SA_ERR_NO_KERNEL,
            "no embedded image for compute capability %d.%d (dtype %d, variant %d); the oldest shipped target is "
            "sm_%d",
            cc / 10, cc % 10, dtype, variant, ulsam_images::kKernels[0].arch);
    auto const& px = ulsam_images::kPtx[ulsam_images::kKernels[ptxIdx].ptx];
    if (loadImage(d, px.text, ptxIdx, out, &ptxWhy))
    {
        out->arch = px.target;
        out->image = ULSAM_SA_IMAGE_PTX;
        return ULSAM_SA_OK;
    }
    int drv = 0;
    d.cuDriverGetVersion(&drv);
    return fail(ULSAM_SA_ERR_MODULE_LOAD,
        "the kernel did not load on sm_%d under driver CUDA %d.%d (the PTX needs ISA %s = CUDA >= 12.0): "
        "PTX: %s%s%s",
        cc, drv / 1000, (drv % 1000) / 10, ulsam_images::kPtxVersion, ptxWhy.c_str(),
        cubinWhy.empty() ? "" : "; cubin: ", cubinWhy.c_str());
}

// Looks up the prepared state of the current context (no driver call besides the key).
int preparedState(Driver& d, int dtype, uint64_t* key, DeviceInfo* info, LoadedKernel* kernels)
{
    int const st = currentContext(d, nullptr, key);
    if (st != ULSAM_SA_OK)
        return st;
    std::lock_guard<std::mutex> lock(gMutex);
    auto it = gContexts.find(*key);
    if (it == gContexts.end() || !it->second.prepared[dtype])
        return fail(ULSAM_SA_ERR_NOT_PREPARED,
            "the %s kernels are not loaded in this CUDA context (id %llu): call ulsam_sa_prepare(%d) first, "
            "outside enqueue and stream capture",
            dtype == ULSAM_SA_FP16 ? "fp16" : "fp32", static_cast<unsigned long long>(*key), dtype);
    *info = it->second.info;
    std::copy(it->second.kernels[dtype], it->second.kernels[dtype] + kNumVariants, kernels);
    return ULSAM_SA_OK;
}

int launchInCurrentContext(uint64_t const* constantsContext, void const* x, void* y, int dtype, int N, int C, int H,
    int W, int groups, float const* dwScale, float const* dwShift, float const* pwWeight, float const* pwBias,
    int reluDw, int reluPw, void* workspace, size_t workspaceBytes_, ulsam_sa_stream_t stream);

} // namespace

struct ulsam_sa_constants
{
    int channels{0};
    int groups{0};
    uint64_t context{0};   // ctxKey() of the context the buffer lives in
    CUdeviceptr buffer{0}; // [dw_scale C | dw_shift C | pw_weight C | pw_bias groups] fp32
};

namespace
{

bool validLaunchArgs(void const* x, void* y, int dtype, int N, int C, int H, int W, int groups, void const* p0,
    void const* p1, void const* p2, void const* p3, void* workspace, size_t workspaceBytes_, int* status)
{
    if (!validShape(dtype, N, C, H, W, groups))
        *status = fail(ULSAM_SA_ERR_ARGUMENT, "bad shape/dtype: dtype=%d N=%d C=%d H=%d W=%d groups=%d", dtype, N, C,
            H, W, groups);
    else if (!x || !y || !p0 || !p1 || !p2 || !p3)
        *status = fail(ULSAM_SA_ERR_ARGUMENT, "null tensor or constant pointer");
    else if (x == y)
        *status = fail(ULSAM_SA_ERR_ARGUMENT, "y must not alias x (pass C re-reads x after y rows were written)");
    else if (reinterpret_cast<uintptr_t>(x) % static_cast<uintptr_t>(elemBytes(dtype))
        || reinterpret_cast<uintptr_t>(y) % static_cast<uintptr_t>(elemBytes(dtype))
        || reinterpret_cast<uintptr_t>(workspace) % 4)
        *status = fail(ULSAM_SA_ERR_ARGUMENT, "misaligned x/y/workspace pointer");
    else if (!workspace || workspaceBytes_ < static_cast<size_t>(static_cast<int64_t>(H) * W * 4))
        *status = fail(ULSAM_SA_ERR_WORKSPACE, "workspace must hold at least H*W*4 = %lld bytes (got %zu)",
            static_cast<long long>(H) * W * 4, workspaceBytes_);
    else
        return true;
    return false;
}

// Launches with the kernels ulsam_sa_prepare loaded in the current context; constants uploaded by
// ulsam_sa_constants_create must live in that same context.
int launchInCurrentContext(uint64_t const* constantsContext, void const* x, void* y, int dtype, int N, int C, int H,
    int W, int groups, float const* dwScale, float const* dwShift, float const* pwWeight, float const* pwBias,
    int reluDw, int reluPw, void* workspace, size_t workspaceBytes_, ulsam_sa_stream_t stream)
{
    Driver& d = driver();
    uint64_t key = 0;
    DeviceInfo info;
    LoadedKernel kernels[kNumVariants];
    int st = preparedState(d, dtype, &key, &info, kernels);
    if (st != ULSAM_SA_OK)
        return st;
    if (constantsContext && key != *constantsContext)
        return fail(ULSAM_SA_ERR_NOT_PREPARED,
            "the constants were uploaded in CUDA context %llu, the current one is %llu",
            static_cast<unsigned long long>(*constantsContext), static_cast<unsigned long long>(key));
    ulsam_sa_plan_t plan;
    st = ulsam_sa_plan(dtype, N, C, H, W, groups, info.smCount, info.l2Bytes, workspaceBytes_, &plan);
    if (st != ULSAM_SA_OK)
        return st;
    LoadedKernel const& lk = kernels[plan.variant];
    if (!lk.fn)
        return fail(ULSAM_SA_ERR_NOT_PREPARED, "variant %d is not loaded", plan.variant);
    if (lk.numWarps != plan.num_warps)
        return fail(ULSAM_SA_ERR_NO_KERNEL,
            "embedded image (num_warps=%d) does not match variant %d (num_warps=%d); regenerate the images and rebuild",
            lk.numWarps, plan.variant, plan.num_warps);

    // Parameter order = <image dir>/manifest.json "params": 5 input pointers, 9 int32, 2 output
    // pointers (y, workspace), then Triton's two hidden scratch pointers (no scratch: NULL).
    CUdeviceptr px = reinterpret_cast<CUdeviceptr>(x), py = reinterpret_cast<CUdeviceptr>(y);
    CUdeviceptr ps = reinterpret_cast<CUdeviceptr>(dwScale), pt = reinterpret_cast<CUdeviceptr>(dwShift);
    CUdeviceptr pw = reinterpret_cast<CUdeviceptr>(pwWeight), pb = reinterpret_cast<CUdeviceptr>(pwBias);
    CUdeviceptr pws = reinterpret_cast<CUdeviceptr>(workspace);
    int32_t G = C / groups, h = H, w = W, grp = groups, nItems = plan.items, split = plan.split, chunk = plan.chunk;
    int32_t rd = reluDw ? 1 : 0, rp = reluPw ? 1 : 0;
    CUdeviceptr globalScratch = 0, profileScratch = 0;
    void* args[] = {&px, &ps, &pt, &pw, &pb, &G, &h, &w, &grp, &nItems, &split, &chunk, &rd, &rp, &py, &pws,
        &globalScratch, &profileScratch};
    static_assert(sizeof(args) / sizeof(args[0]) == 18, "kernel parameter count");
    CUresult r = d.cuLaunchKernel(lk.fn, static_cast<unsigned>(plan.grid), 1, 1,
        static_cast<unsigned>(32 * lk.numWarps), 1, 1, static_cast<unsigned>(lk.sharedBytes),
        reinterpret_cast<CUstream>(stream), args, nullptr);
    if (r != CUDA_SUCCESS)
        return fail(ULSAM_SA_ERR_LAUNCH, "cuLaunchKernel(grid=%d, threads=%d, shared=%d): %s", plan.grid,
            32 * lk.numWarps, lk.sharedBytes, cuErr(d, r));
    return ULSAM_SA_OK;
}

} // namespace

extern "C" {

int ulsam_sa_plan(int dtype, int N, int C, int H, int W, int groups, int smCount, long long l2Bytes,
    size_t workspaceLimit, ulsam_sa_plan_t* out)
{
    if (!out)
        return fail(ULSAM_SA_ERR_ARGUMENT, "plan output is null");
    if (!validShape(dtype, N, C, H, W, groups))
        return fail(ULSAM_SA_ERR_ARGUMENT, "bad shape/dtype: dtype=%d N=%d C=%d H=%d W=%d groups=%d", dtype, N, C,
            H, W, groups);
    int64_t const sm = smCount > 0 ? smCount : kDefaultSmCount;
    int64_t const l2 = l2Bytes > 0 ? l2Bytes : kDefaultL2Bytes;
    int64_t const g = C / groups;
    int64_t const hw = static_cast<int64_t>(H) * W;
    int const vid = selectVariant(g, W);
    Variant const& v = kVariants[vid];
    int64_t const ctasPerSm = v.numWarps == kSmallWarps ? kCtasPerSmSmall : kCtasPerSmBig;
    int64_t const target = sm * ctasPerSm;
    int64_t const ng = static_cast<int64_t>(N) * groups;
    int64_t split = std::min({kMaxSplit, cdiv(g, v.outC), std::max<int64_t>(1, (sm * kSplitCtasPerSm) / ng)});
    split = std::max<int64_t>(1, std::min(split, g));
    int64_t chunk = cdiv(g, split);
    chunk = std::min(g, cdiv(chunk, v.outC) * v.outC);
    split = cdiv(g, chunk);
    int64_t const items = ng * split;
    int64_t const sliceBytes = g * hw * elemBytes(dtype);
    int64_t grid = std::max(target, (l2 / 2) / sliceBytes);
    int64_t const limit = workspaceLimit ? static_cast<int64_t>(workspaceLimit)
                                         : static_cast<int64_t>(workspaceBytes(dtype, N, C, H, W, groups));
    if (limit < hw * 4)
        return fail(ULSAM_SA_ERR_WORKSPACE, "workspace of %lld bytes is below one logit row (%lld bytes)",
            static_cast<long long>(limit), static_cast<long long>(hw * 4));
    grid = std::max<int64_t>(1, std::min({grid, items, limit / (hw * 4)}));
    if (items > INT32_MAX || g * hw > INT32_MAX)
        return fail(ULSAM_SA_ERR_ARGUMENT, "tensor too large for 32-bit in-group offsets (G*H*W=%lld)",
            static_cast<long long>(g * hw));
    out->variant = vid;
    out->split = static_cast<int>(split);
    out->chunk = static_cast<int>(chunk);
    out->items = static_cast<int>(items);
    out->grid = static_cast<int>(grid);
    out->num_warps = v.numWarps;
    out->block_w = v.blockW;
    out->rows = v.rows;
    out->block_c = v.blockC;
    out->out_c = v.outC;
    out->workspace_bytes = static_cast<size_t>(grid * hw * 4);
    return ULSAM_SA_OK;
}

size_t ulsam_sa_workspace_size(int dtype, int N, int C, int H, int W, int groups)
{
    if (!validShape(dtype, N, C, H, W, groups))
        return 0;
    return workspaceBytes(dtype, N, C, H, W, groups);
}

int ulsam_sa_prepare(int dtype)
{
    if (dtype != ULSAM_SA_FP32 && dtype != ULSAM_SA_FP16)
        return fail(ULSAM_SA_ERR_ARGUMENT, "bad dtype %d", dtype);
    Driver& d = driver();
    uint64_t key = 0;
    int st = currentContext(d, nullptr, &key);
    if (st != ULSAM_SA_OK)
        return st;
    std::lock_guard<std::mutex> prepareLock(gPrepareMutex);
    DeviceInfo info;
    bool known = false;
    {
        std::lock_guard<std::mutex> lock(gMutex);
        auto it = gContexts.find(key);
        if (it != gContexts.end())
        {
            if (it->second.prepared[dtype])
                return ULSAM_SA_OK;
            info = it->second.info;
            known = true;
        }
    }
    if (!known && (st = queryDevice(d, &info)) != ULSAM_SA_OK)
        return st;
    LoadedKernel loaded[kNumVariants];
    for (int v = 0; v < kNumVariants; ++v)
        if ((st = loadKernel(d, info.cc, dtype, v, &loaded[v])) != ULSAM_SA_OK)
        {
            for (int u = 0; u < v; ++u) // all variants or none
                d.cuModuleUnload(loaded[u].module);
            return st;
        }
    std::lock_guard<std::mutex> lock(gMutex);
    ContextState& cs = gContexts[key];
    cs.info = info;
    std::copy(loaded, loaded + kNumVariants, cs.kernels[dtype]);
    cs.prepared[dtype] = true;
    return ULSAM_SA_OK;
}

int ulsam_sa_set_image_policy(int policy)
{
    if (policy != ULSAM_SA_IMAGES_AUTO && policy != ULSAM_SA_IMAGES_CUBIN_ONLY && policy != ULSAM_SA_IMAGES_PTX_ONLY)
        return fail(ULSAM_SA_ERR_ARGUMENT, "bad image policy %d", policy);
    gImagePolicy.store(policy);
    return ULSAM_SA_OK;
}

int ulsam_sa_loaded_image(int dtype, int variant, int* kind, int* arch)
{
    if ((dtype != ULSAM_SA_FP32 && dtype != ULSAM_SA_FP16) || variant < 0 || variant >= kNumVariants)
        return fail(ULSAM_SA_ERR_ARGUMENT, "bad dtype %d / variant %d", dtype, variant);
    Driver& d = driver();
    uint64_t key = 0;
    int const st = currentContext(d, nullptr, &key);
    if (st != ULSAM_SA_OK)
        return st;
    std::lock_guard<std::mutex> lock(gMutex);
    auto it = gContexts.find(key);
    LoadedKernel const none;
    LoadedKernel const& lk
        = (it != gContexts.end() && it->second.prepared[dtype]) ? it->second.kernels[dtype][variant] : none;
    if (kind)
        *kind = lk.image;
    if (arch)
        *arch = lk.arch;
    return ULSAM_SA_OK;
}

int ulsam_sa_launch(void const* x, void* y, int dtype, int N, int C, int H, int W, int groups,
    float const* dwScale, float const* dwShift, float const* pwWeight, float const* pwBias, int reluDw, int reluPw,
    void* workspace, size_t workspaceBytes_, ulsam_sa_stream_t stream)
{
    int st = ULSAM_SA_OK;
    if (!validLaunchArgs(x, y, dtype, N, C, H, W, groups, dwScale, dwShift, pwWeight, pwBias, workspace,
            workspaceBytes_, &st))
        return st;
    return launchInCurrentContext(nullptr, x, y, dtype, N, C, H, W, groups, dwScale, dwShift, pwWeight, pwBias,
        reluDw, reluPw, workspace, workspaceBytes_, stream);
}

int ulsam_sa_constants_create(int C, int groups, float const* dwScale, float const* dwShift, float const* pwWeight,
    float const* pwBias, ulsam_sa_constants_t** out)
{
    if (!out || !dwScale || !dwShift || !pwWeight || !pwBias || C < 1 || groups < 1 || C % groups)
        return fail(ULSAM_SA_ERR_ARGUMENT, "bad constants: C=%d groups=%d", C, groups);
    *out = nullptr;
    Driver& d = driver();
    uint64_t key = 0;
    int const st = currentContext(d, nullptr, &key);
    if (st != ULSAM_SA_OK)
        return st;
    size_t const n = static_cast<size_t>(3) * C + groups;
    std::string host(n * sizeof(float), '\0');
    float* h = reinterpret_cast<float*>(&host[0]);
    std::memcpy(h, dwScale, C * sizeof(float));
    std::memcpy(h + C, dwShift, C * sizeof(float));
    std::memcpy(h + 2 * C, pwWeight, C * sizeof(float));
    std::memcpy(h + 3 * C, pwBias, groups * sizeof(float));
    auto* k = new ulsam_sa_constants;
    k->channels = C;
    k->groups = groups;
    k->context = key;
    CUresult r = d.cuMemAlloc(&k->buffer, n * sizeof(float));
    if (r != CUDA_SUCCESS)
    {
        delete k;
        return fail(ULSAM_SA_ERR_CUDA, "cuMemAlloc(%zu): %s", n * sizeof(float), cuErr(d, r));
    }
    if ((r = d.cuMemcpyHtoD(k->buffer, h, n * sizeof(float))) != CUDA_SUCCESS)
    {
        d.cuMemFree(k->buffer);
        delete k;
        return fail(ULSAM_SA_ERR_CUDA, "cuMemcpyHtoD: %s", cuErr(d, r));
    }
    *out = k;
    return ULSAM_SA_OK;
}

void ulsam_sa_constants_destroy(ulsam_sa_constants_t* k)
{
    if (!k)
        return;
    Driver& d = driver();
    if (d.loaded && k->buffer)
        d.cuMemFree(k->buffer); // may fail harmlessly when the context is already gone
    delete k;
}

int ulsam_sa_constants_channels(ulsam_sa_constants_t const* k)
{
    return k ? k->channels : 0;
}

int ulsam_sa_constants_groups(ulsam_sa_constants_t const* k)
{
    return k ? k->groups : 0;
}

int ulsam_sa_launch_with_constants(void const* x, void* y, int dtype, int N, int C, int H, int W,
    ulsam_sa_constants_t const* k, int reluDw, int reluPw, void* workspace, size_t workspaceBytes_,
    ulsam_sa_stream_t stream)
{
    if (!k || !k->buffer)
        return fail(ULSAM_SA_ERR_NOT_PREPARED, "the constants are not uploaded (ulsam_sa_constants_create)");
    if (k->channels != C)
        return fail(ULSAM_SA_ERR_ARGUMENT, "input has %d channels, constants were made for %d", C, k->channels);
    float const* base = reinterpret_cast<float const*>(k->buffer);
    int st = ULSAM_SA_OK;
    if (!validLaunchArgs(x, y, dtype, N, C, H, W, k->groups, base, base, base, base, workspace, workspaceBytes_, &st))
        return st;
    return launchInCurrentContext(&k->context, x, y, dtype, N, C, H, W, k->groups, base, base + C, base + 2 * C,
        base + 3 * C, reluDw, reluPw, workspace, workspaceBytes_, stream);
}

int ulsam_sa_use_device(int ordinal)
{
    Driver& d = driver();
    if (!d.loaded)
        return fail(ULSAM_SA_ERR_NO_DRIVER, "%s", d.error.c_str());
    CUdevice dev;
    CUcontext ctx;
    CUresult r = d.cuDeviceGet(&dev, ordinal);
    if (r == CUDA_SUCCESS)
        r = d.cuDevicePrimaryCtxRetain(&ctx, dev);
    if (r == CUDA_SUCCESS)
        r = d.cuCtxSetCurrent(ctx);
    return r == CUDA_SUCCESS ? ULSAM_SA_OK : fail(ULSAM_SA_ERR_CUDA, "device %d: %s", ordinal, cuErr(d, r));
}

int ulsam_sa_device_properties(int* cc, int* smCount, long long* l2Bytes, char* name, int nameLen)
{
    Driver& d = driver();
    uint64_t key = 0;
    int st = currentContext(d, nullptr, &key);
    DeviceInfo info;
    if (st != ULSAM_SA_OK || (st = queryDevice(d, &info)) != ULSAM_SA_OK)
        return st;
    if (cc) *cc = info.cc;
    if (smCount) *smCount = info.smCount;
    if (l2Bytes) *l2Bytes = info.l2Bytes;
    if (name && nameLen > 0)
    {
        CUdevice dev;
        name[0] = 0;
        if (d.cuCtxGetDevice(&dev) == CUDA_SUCCESS)
            d.cuDeviceGetName(name, nameLen, dev);
    }
    return ULSAM_SA_OK;
}

#define ULSAM_DRV_CALL(expr, what)                                                                                     \
    do                                                                                                                 \
    {                                                                                                                  \
        Driver& d_ = driver();                                                                                         \
        if (!d_.loaded)                                                                                                \
            return fail(ULSAM_SA_ERR_NO_DRIVER, "%s", d_.error.c_str());                                               \
        CUresult r_ = (expr);                                                                                          \
        if (r_ != CUDA_SUCCESS)                                                                                        \
            return fail(ULSAM_SA_ERR_CUDA, "%s: %s", what, cuErr(d_, r_));                                             \
        return ULSAM_SA_OK;                                                                                            \
    } while (0)

int ulsam_sa_driver_version(int* version)
{
    if (!version)
        return fail(ULSAM_SA_ERR_ARGUMENT, "null output pointer");
    ULSAM_DRV_CALL(d_.cuDriverGetVersion(version), "cuDriverGetVersion");
}

int ulsam_sa_malloc(void** ptr, size_t bytes)
{
    if (!ptr)
        return fail(ULSAM_SA_ERR_ARGUMENT, "null output pointer");
    ULSAM_DRV_CALL(d_.cuMemAlloc(reinterpret_cast<CUdeviceptr*>(ptr), bytes), "cuMemAlloc");
}

int ulsam_sa_free(void* ptr)
{
    ULSAM_DRV_CALL(d_.cuMemFree(reinterpret_cast<CUdeviceptr>(ptr)), "cuMemFree");
}

int ulsam_sa_memcpy_htod(void* dst, void const* src, size_t bytes)
{
    ULSAM_DRV_CALL(d_.cuMemcpyHtoD(reinterpret_cast<CUdeviceptr>(dst), src, bytes), "cuMemcpyHtoD");
}

int ulsam_sa_memcpy_dtoh(void* dst, void const* src, size_t bytes)
{
    ULSAM_DRV_CALL(d_.cuMemcpyDtoH(dst, reinterpret_cast<CUdeviceptr>(src), bytes), "cuMemcpyDtoH");
}

int ulsam_sa_synchronize(ulsam_sa_stream_t stream)
{
    ULSAM_DRV_CALL(stream ? d_.cuStreamSynchronize(reinterpret_cast<CUstream>(stream)) : d_.cuCtxSynchronize(),
        "synchronize");
}

char const* ulsam_sa_status_string(int status)
{
    switch (status)
    {
    case ULSAM_SA_OK: return "ok";
    case ULSAM_SA_ERR_ARGUMENT: return "invalid argument";
    case ULSAM_SA_ERR_NO_DRIVER: return "CUDA driver unavailable";
    case ULSAM_SA_ERR_NO_CONTEXT: return "no current CUDA context";
    case ULSAM_SA_ERR_NO_KERNEL: return "no kernel for this GPU";
    case ULSAM_SA_ERR_MODULE_LOAD: return "kernel image load failed";
    case ULSAM_SA_ERR_LAUNCH: return "kernel launch failed";
    case ULSAM_SA_ERR_WORKSPACE: return "workspace too small";
    case ULSAM_SA_ERR_CUDA: return "CUDA driver call failed";
    case ULSAM_SA_ERR_NOT_PREPARED: return "not prepared in this CUDA context";
    default: return "unknown status";
    }
}

char const* ulsam_sa_last_error(void)
{
    return tLastError.c_str();
}

int ulsam_sa_num_kernels(void)
{
    return ulsam_images::kNumKernels;
}

int ulsam_sa_num_ptx_images(void)
{
    return ulsam_images::kNumPtx;
}

int ulsam_sa_kernel_info(int index, int* arch, int* dtype, int* variant, int* numWarps, int* sharedBytes,
    int* ptxTarget, size_t* ptxBytes, size_t* cubinBytes)
{
    if (index < 0 || index >= ulsam_images::kNumKernels)
        return fail(ULSAM_SA_ERR_ARGUMENT, "kernel index %d out of range", index);
    auto const& k = ulsam_images::kKernels[index];
    auto const& p = ulsam_images::kPtx[k.ptx];
    if (arch) *arch = k.arch;
    if (dtype) *dtype = k.dtype;
    if (variant) *variant = k.variant;
    if (numWarps) *numWarps = k.numWarps;
    if (sharedBytes) *sharedBytes = k.sharedBytes;
    if (ptxTarget) *ptxTarget = p.target;
    if (ptxBytes) *ptxBytes = p.bytes;
    if (cubinBytes) *cubinBytes = k.cubin ? k.cubinBytes : 0;
    return ULSAM_SA_OK;
}

int ulsam_sa_num_variants(void)
{
    return kNumVariants;
}

int ulsam_sa_variant_info(int index, int* blockW, int* rows, int* blockC, int* outC, int* numWarps)
{
    if (index < 0 || index >= kNumVariants)
        return fail(ULSAM_SA_ERR_ARGUMENT, "variant index %d out of range", index);
    Variant const& v = kVariants[index];
    if (blockW) *blockW = v.blockW;
    if (rows) *rows = v.rows;
    if (blockC) *blockC = v.blockC;
    if (outC) *outC = v.outC;
    if (numWarps) *numWarps = v.numWarps;
    return ULSAM_SA_OK;
}

} // extern "C"

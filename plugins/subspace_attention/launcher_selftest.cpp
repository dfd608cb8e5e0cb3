// Self-test for the ULSAM launcher.
//
//   ulsam_sa_selftest [--images=auto|cubin|ptx]
//                                     GPU check: the embedded kernel images vs the CPU reference below
//                                     on a set of shapes (fp32 + fp16); prints which image each variant
//                                     loaded ("IMAGE ..."). Exit 0 pass, 1 fail, 77 = skipped (no CUDA
//                                     driver / GPU), 2 usage error.
//   ulsam_sa_selftest --bench [--images=...]
//                                     also time the kernel (host wall clock around many launches +
//                                     synchronize) for the MobileNet ULSAM shapes.
//   ulsam_sa_selftest --stub <libulsam_cuda_stub.so>
//                                     host-only: drive the launcher through the stub driver (see
//                                     driver_stub.cpp) and check prepare/launch: which images load,
//                                     argument packing, no driver work but cuLaunchKernel after prepare,
//                                     context re-creation, fallbacks and error paths.
//   ulsam_sa_selftest --variants      print the compiled tile-variant table
//   ulsam_sa_selftest --kernels       print the embedded image table
//   ulsam_sa_selftest --plan          read "dtype N C H W groups sm_count l2_bytes ws_limit" lines
//                                     from stdin, print "variant split chunk items grid num_warps
//                                     ws_used ws_size" (host only; tests compare with plan.py)
//   ulsam_sa_selftest --cpu-ref N C H W groups relu_dw relu_pw seed
//                                     print the CPU reference output for the deterministic input
//                                     (tests compare it with the NumPy oracle)
#include "image_table.h"
#include "half_float.h"
#include "launcher.h"

#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace
{

// ---- deterministic inputs (mirrored in tests/test_plugin_build.py::lcg_values) ----
struct Lcg
{
    uint64_t s;
    explicit Lcg(uint64_t seed)
        : s(seed * 2654435761ULL + 12345ULL)
    {
    }
    // uniform in [-1, 1) with 24 bits
    double next()
    {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        return static_cast<double>(s >> 40) / 8388608.0 - 1.0;
    }
};

struct Problem
{
    int N, C, H, W, groups, reluDw, reluPw;
    std::vector<float> x, scale, shift, weight, bias;
};

Problem makeProblem(int N, int C, int H, int W, int groups, int reluDw, int reluPw, uint64_t seed)
{
    Problem p{N, C, H, W, groups, reluDw, reluPw, {}, {}, {}, {}, {}};
    Lcg r(seed);
    p.x.resize(static_cast<size_t>(N) * C * H * W);
    for (auto& v : p.x)
        v = static_cast<float>(2.0 * r.next());
    int const G = C / groups;
    for (int c = 0; c < C; ++c)
    {
        p.scale.push_back(static_cast<float>(1.2 * r.next()));
        p.shift.push_back(static_cast<float>(0.3 * r.next()));
        p.weight.push_back(static_cast<float>(3.0 * r.next() / std::sqrt(static_cast<double>(G))));
    }
    for (int k = 0; k < groups; ++k)
        p.bias.push_back(static_cast<float>(1.0 + 0.5 * r.next()));
    return p;
}

// ---- CPU reference of the op contract (double precision) ----
std::vector<double> cpuReference(Problem const& p, std::vector<float> const& xin)
{
    int const N = p.N, C = p.C, H = p.H, W = p.W, g = p.groups, G = C / g;
    size_t const hw = static_cast<size_t>(H) * W;
    std::vector<double> y(xin.size());
    std::vector<double> a(hw), logits(hw);
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < g; ++k)
        {
            std::fill(logits.begin(), logits.end(), 0.0);
            for (int cc = 0; cc < G; ++cc)
            {
                int const c = k * G + cc;
                float const* xc = &xin[(static_cast<size_t>(n) * C + c) * hw];
                for (size_t i = 0; i < hw; ++i)
                {
                    double v = static_cast<double>(p.scale[c]) * xc[i] + p.shift[c];
                    a[i] = p.reluDw ? std::max(v, 0.0) : v;
                }
                for (int i = 0; i < H; ++i)
                    for (int j = 0; j < W; ++j)
                    {
                        double m = -INFINITY;
                        for (int di = -1; di <= 1; ++di)
                            for (int dj = -1; dj <= 1; ++dj)
                            {
                                int const ii = i + di, jj = j + dj;
                                if (ii >= 0 && ii < H && jj >= 0 && jj < W)
                                    m = std::max(m, a[static_cast<size_t>(ii) * W + jj]);
                            }
                        logits[static_cast<size_t>(i) * W + j] += p.weight[c] * m;
                    }
            }
            double mx = -INFINITY;
            for (auto& l : logits)
            {
                l += p.bias[k];
                if (p.reluPw)
                    l = std::max(l, 0.0);
                mx = std::max(mx, l);
            }
            double sum = 0.0;
            for (auto l : logits)
                sum += std::exp(l - mx);
            for (int cc = 0; cc < G; ++cc)
            {
                size_t const off = (static_cast<size_t>(n) * C + k * G + cc) * hw;
                for (size_t i = 0; i < hw; ++i)
                    y[off + i] = xin[off + i] * (1.0 + std::exp(logits[i] - mx) / sum);
            }
        }
    return y;
}


#define CHECK(call)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        int st_ = (call);                                                                                              \
        if (st_ != ULSAM_SA_OK)                                                                                        \
        {                                                                                                              \
            std::fprintf(stderr, "%s failed: %s: %s\n", #call, ulsam_sa_status_string(st_), ulsam_sa_last_error());   \
            return -1;                                                                                                 \
        }                                                                                                              \
    } while (0)

// Runs one problem on the GPU; returns max |err| / tolerance ratio (<= 1 passes), -1 on error.
double runGpu(Problem const& p, int dtype, double* usPerLaunch, int reps)
{
    size_t const n = p.x.size();
    size_t const eb = dtype == ULSAM_SA_FP16 ? 2 : 4;
    std::vector<float> xin = p.x;
    std::vector<uint16_t> xh;
    if (dtype == ULSAM_SA_FP16)
    {
        xh.resize(n);
        for (size_t i = 0; i < n; ++i)
        {
            xh[i] = toHalf(p.x[i]);
            xin[i] = fromHalf(xh[i]); // the reference sees exactly what the kernel sees
        }
    }
    std::vector<double> ref = cpuReference(p, xin);
    void *dx = nullptr, *dy = nullptr, *dws = nullptr;
    ulsam_sa_constants_t* k = nullptr;
    size_t const wsBytes = ulsam_sa_workspace_size(dtype, p.N, p.C, p.H, p.W, p.groups);
    CHECK(ulsam_sa_malloc(&dx, n * eb));
    CHECK(ulsam_sa_malloc(&dy, n * eb));
    CHECK(ulsam_sa_malloc(&dws, wsBytes));
    CHECK(ulsam_sa_memcpy_htod(dx, dtype == ULSAM_SA_FP16 ? static_cast<void const*>(xh.data()) : p.x.data(), n * eb));
    CHECK(ulsam_sa_constants_create(p.C, p.groups, p.scale.data(), p.shift.data(), p.weight.data(), p.bias.data(), &k));
    CHECK(ulsam_sa_launch_with_constants(dx, dy, dtype, p.N, p.C, p.H, p.W, k, p.reluDw, p.reluPw, dws, wsBytes, nullptr));
    CHECK(ulsam_sa_synchronize(nullptr));
    std::vector<float> y(n);
    if (dtype == ULSAM_SA_FP16)
    {
        std::vector<uint16_t> yh(n);
        CHECK(ulsam_sa_memcpy_dtoh(yh.data(), dy, n * eb));
        for (size_t i = 0; i < n; ++i)
            y[i] = fromHalf(yh[i]);
    }
    else
        CHECK(ulsam_sa_memcpy_dtoh(y.data(), dy, n * eb));
    double worst = 0.0;
    double attMax = 0.0;
    for (size_t i = 0; i < n; ++i)
        attMax = std::max(attMax, std::fabs(ref[i] - xin[i]));
    for (size_t i = 0; i < n; ++i)
    {
        double const tol = dtype == ULSAM_SA_FP16 ? std::ldexp(std::fabs(ref[i]), -11) * 1.001 + 1e-6
                                                  : 4 * 1.1920929e-7 * std::fabs(ref[i]) + 1e-5 * attMax + 1e-12;
        double const e = std::fabs(y[i] - ref[i]);
        if (!std::isfinite(y[i]))
            return 1e30;
        worst = std::max(worst, e / tol);
    }
    if (usPerLaunch && reps > 0)
    {
        for (int i = 0; i < 3; ++i)
            CHECK(ulsam_sa_launch_with_constants(dx, dy, dtype, p.N, p.C, p.H, p.W, k, p.reluDw, p.reluPw, dws, wsBytes, nullptr));
        CHECK(ulsam_sa_synchronize(nullptr));
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i)
            CHECK(ulsam_sa_launch_with_constants(dx, dy, dtype, p.N, p.C, p.H, p.W, k, p.reluDw, p.reluPw, dws, wsBytes, nullptr));
        CHECK(ulsam_sa_synchronize(nullptr));
        auto t1 = std::chrono::steady_clock::now();
        *usPerLaunch = std::chrono::duration<double, std::micro>(t1 - t0).count() / reps;
    }
    ulsam_sa_constants_destroy(k);
    ulsam_sa_free(dx);
    ulsam_sa_free(dy);
    ulsam_sa_free(dws);
    return worst;
}

int gpuMain(bool bench, int policy)
{
    int st = ulsam_sa_use_device(0);
    if (st == ULSAM_SA_ERR_NO_DRIVER || st == ULSAM_SA_ERR_CUDA)
    {
        std::printf("SKIP: %s: %s\n", ulsam_sa_status_string(st), ulsam_sa_last_error());
        return 77;
    }
    int cc = 0, sms = 0, drv = 0;
    long long l2 = 0;
    char name[256] = {0};
    if ((st = ulsam_sa_device_properties(&cc, &sms, &l2, name, sizeof(name))) != ULSAM_SA_OK)
    {
        std::printf("FAIL: device query: %s\n", ulsam_sa_last_error());
        return 1;
    }
    ulsam_sa_driver_version(&drv);
    std::printf("device: %s (sm_%d, %d SMs, L2 %lld KiB, driver CUDA %d.%d)\n", name, cc, sms, l2 / 1024,
        drv / 1000, (drv % 1000) / 10);
    ulsam_sa_set_image_policy(policy);
    for (int dtype : {ULSAM_SA_FP32, ULSAM_SA_FP16})
    {
        auto const t0 = std::chrono::steady_clock::now();
        if ((st = ulsam_sa_prepare(dtype)) != ULSAM_SA_OK)
        {
            std::printf("FAIL prepare %s: %s: %s\n", dtype ? "fp16" : "fp32", ulsam_sa_status_string(st),
                ulsam_sa_last_error());
            return 1;
        }
        double const ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        for (int v = 0; v < ulsam_sa_num_variants(); ++v)
        {
            int kind = 0, arch = 0;
            ulsam_sa_loaded_image(dtype, v, &kind, &arch);
            std::printf("IMAGE %s variant=%d %s sm_%d\n", dtype ? "fp16" : "fp32", v,
                kind == ULSAM_SA_IMAGE_CUBIN ? "cubin" : kind == ULSAM_SA_IMAGE_PTX ? "ptx" : "none", arch);
        }
        std::printf("PREPARE %s %.1f ms\n", dtype ? "fp16" : "fp32", ms);
    }
    struct Case
    {
        int N, C, H, W, g, rd, rp;
    };
    Case const cases[] = {{1, 96, 14, 14, 4, 1, 1}, {2, 160, 7, 7, 1, 1, 1}, {1, 512, 14, 14, 1, 1, 1},
        {3, 512, 14, 14, 16, 0, 0}, {2, 16, 1, 1, 4, 1, 1}, {1, 8, 17, 33, 2, 0, 1}, {2, 64, 112, 112, 4, 1, 0},
        {4, 24, 9, 7, 8, 1, 1}, {64, 96, 14, 14, 4, 1, 1}, {1, 1024, 7, 7, 2, 1, 1}};
    int failures = 0;
    for (auto const& c : cases)
        for (int dtype : {ULSAM_SA_FP32, ULSAM_SA_FP16})
        {
            Problem p = makeProblem(c.N, c.C, c.H, c.W, c.g, c.rd, c.rp, 1234u + c.C + c.H);
            double const r = runGpu(p, dtype, nullptr, 0);
            bool const ok = r >= 0 && r <= 1.0;
            failures += ok ? 0 : 1;
            std::printf("%s N=%d C=%d %dx%d g=%d relu=%d%d %s err/tol=%.3g\n", ok ? "PASS" : "FAIL", c.N, c.C, c.H,
                c.W, c.g, c.rd, c.rp, dtype ? "fp16" : "fp32", r);
        }
    if (bench)
    {
        Case const shapes[] = {{1, 96, 14, 14, 4, 1, 1}, {1, 160, 7, 7, 4, 1, 1}, {1, 512, 14, 14, 4, 1, 1},
            {64, 96, 14, 14, 4, 1, 1}, {64, 160, 7, 7, 4, 1, 1}, {64, 512, 14, 14, 4, 1, 1}};
        for (auto const& c : shapes)
            for (int dtype : {ULSAM_SA_FP32, ULSAM_SA_FP16})
            {
                Problem p = makeProblem(c.N, c.C, c.H, c.W, c.g, 1, 1, 7);
                double us = 0;
                double const r = runGpu(p, dtype, &us, 200);
                double const bytes = 2.0 * p.x.size() * (dtype ? 2 : 4);
                std::printf("BENCH N=%d C=%d %dx%d g=%d %s %.2f us %.1f GB/s (min traffic) err/tol=%.3g\n", c.N, c.C,
                    c.H, c.W, c.g, dtype ? "fp16" : "fp32", us, bytes / us / 1e3, r);
            }
    }
    std::printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}


// ---------------------------------------------------------------- host-only checks via the stub
struct Stub
{
    void (*setDevice)(int, int, int);
    void (*setDriverVersion)(int);
    void (*setContext)(void*, unsigned long long);
    void (*setFailures)(int, int);
    void (*setParamSizes)(int const*, int);
    long (*count)(char const*);
    long (*total)();
    int (*lastLaunch)(unsigned*, int*, void**, unsigned char*, int);
    int (*lastHtoD)(unsigned long long*, unsigned char*, int);
    int (*hasCtxId)();
};

int gStubFailures = 0;

void expect(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    if (!ok)
    {
        std::printf("     last error: %s\n", ulsam_sa_last_error());
        ++gStubFailures;
    }
}

// The argument bytes cuLaunchKernel must receive, packed with the manifest's parameter sizes.
std::vector<unsigned char> expectedArgs(std::vector<uint64_t> const& values)
{
    std::vector<unsigned char> out;
    for (int i = 0; i < ulsam_images::kNumParams; ++i)
    {
        uint64_t const v = values[static_cast<size_t>(i)];
        unsigned char b[8];
        std::memcpy(b, &v, 8); // little endian: the low bytes are the 32-bit value
        out.insert(out.end(), b, b + ulsam_images::kParamBytes[i]);
    }
    return out;
}

char const* const kWorkNames[] = {"cuModuleLoadDataEx", "cuModuleGetFunction", "cuFuncSetAttribute", "cuMemAlloc_v2",
    "cuMemcpyHtoD_v2", "cuMemFree_v2", "cuDeviceGetAttribute", "cuCtxGetDevice", "cuModuleUnload"};

long workCalls(Stub const& s)
{
    long n = 0;
    for (char const* name : kWorkNames)
        n += s.count(name);
    return n;
}

int stubMain(char const* path)
{
    setenv("ULSAM_SA_CUDA_DRIVER", path, 1);
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
    {
        std::printf("FAIL dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    Stub s{};
    auto get = [&](auto& fn, char const* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
        if (!fn)
            std::printf("FAIL stub lacks %s\n", name);
        return fn != nullptr;
    };
    if (!(get(s.setDevice, "ulsam_stub_set_device") && get(s.setDriverVersion, "ulsam_stub_set_driver_version")
            && get(s.setContext, "ulsam_stub_set_context") && get(s.setFailures, "ulsam_stub_set_failures")
            && get(s.setParamSizes, "ulsam_stub_set_param_sizes") && get(s.count, "ulsam_stub_count")
            && get(s.total, "ulsam_stub_total_calls") && get(s.lastLaunch, "ulsam_stub_last_launch")
            && get(s.lastHtoD, "ulsam_stub_last_htod") && get(s.hasCtxId, "ulsam_stub_has_ctx_id")))
        return 1;
    bool const withId = s.hasCtxId() != 0;
    s.setParamSizes(ulsam_images::kParamBytes, ulsam_images::kNumParams);
    int paramBytes = 0;
    for (int i = 0; i < ulsam_images::kNumParams; ++i)
        paramBytes += ulsam_images::kParamBytes[i];
    expect(ulsam_images::kNumParams == 18 && paramBytes == 5 * 8 + 9 * 4 + 2 * 8 + 2 * 8,
        "manifest parameter table: 5 pointers, 9 int32, 2 pointers, 2 hidden pointers");

    // an R525-class driver (CUDA 12.0, PTX ISA <= 8.0) on an sm_86 GPU
    s.setDriverVersion(12000);
    s.setDevice(86, 16, 4 << 20);
    void* const ctxA = reinterpret_cast<void*>(0x1000);
    s.setContext(ctxA, 101);

    char* const x = reinterpret_cast<char*>(0x10000000);
    char* const y = reinterpret_cast<char*>(0x20000000);
    char* const ws = reinterpret_cast<char*>(0x30000000);
    auto* const stream = reinterpret_cast<ulsam_sa_stream_t>(0x4242);
    int const C = 96, groups = 4;
    std::vector<float> scale(C), shift(C), weight(C), bias(groups);
    for (int i = 0; i < C; ++i)
    {
        scale[i] = 0.5f + i;
        shift[i] = -1.0f * i;
        weight[i] = 0.25f * i;
    }
    for (int k = 0; k < groups; ++k)
        bias[k] = 100.0f + k;

    int st = ulsam_sa_launch(x, y, ULSAM_SA_FP32, 1, C, 14, 14, groups, reinterpret_cast<float*>(0x50000000),
        reinterpret_cast<float*>(0x50000000), reinterpret_cast<float*>(0x50000000),
        reinterpret_cast<float*>(0x50000000), 1, 1, ws, 1 << 20, stream);
    expect(st == ULSAM_SA_ERR_NOT_PREPARED && s.count("cuModuleLoadDataEx") == 0 && s.count("cuLaunchKernel") == 0,
        "launch before prepare: ULSAM_SA_ERR_NOT_PREPARED, nothing loaded or launched");

    st = ulsam_sa_prepare(ULSAM_SA_FP32);
    bool allCubin = true;
    for (int v = 0; v < ulsam_sa_num_variants(); ++v)
    {
        int kind = 0, arch = 0;
        ulsam_sa_loaded_image(ULSAM_SA_FP32, v, &kind, &arch);
        allCubin = allCubin && kind == ULSAM_SA_IMAGE_CUBIN && arch == 86;
    }
    expect(st == ULSAM_SA_OK && s.count("cuModuleLoadDataEx") == ulsam_sa_num_variants() && allCubin,
        "prepare(fp32) on sm_86 / CUDA 12.0: one module per variant, all the native sm_86 cubin");
    long const loads = s.count("cuModuleLoadDataEx");
    expect(ulsam_sa_prepare(ULSAM_SA_FP32) == ULSAM_SA_OK && s.count("cuModuleLoadDataEx") == loads,
        "prepare again in the same context: no module load");

    ulsam_sa_constants_t* k = nullptr;
    long const allocs = s.count("cuMemAlloc_v2");
    st = ulsam_sa_constants_create(C, groups, scale.data(), shift.data(), weight.data(), bias.data(), &k);
    std::vector<unsigned char> up(16 * 1024);
    unsigned long long dst = 0;
    int const upBytes = s.lastHtoD(&dst, up.data(), static_cast<int>(up.size()));
    std::vector<float> want;
    for (auto const* v : {&scale, &shift, &weight, &bias})
        want.insert(want.end(), v->begin(), v->end());
    expect(st == ULSAM_SA_OK && s.count("cuMemAlloc_v2") == allocs + 1 && s.count("cuMemcpyHtoD_v2") == 1
            && upBytes == static_cast<int>(want.size() * 4) && std::memcmp(up.data(), want.data(), want.size() * 4) == 0,
        "constants: one allocation, one upload of [dw_scale | dw_shift | pw_weight | pw_bias]");
    unsigned long long const base = dst;

    // launches: only cuCtxGetCurrent (+ cuCtxGetId) and cuLaunchKernel, arguments as the manifest says
    struct Shape
    {
        int n, h, w, reluDw, reluPw;
    };
    Shape const shapes[] = {{1, 14, 14, 1, 1}, {64, 14, 14, 0, 1}, {2, 7, 7, 1, 0}, {3, 56, 56, 1, 1}, {1, 1, 1, 0, 0}};
    long const work0 = workCalls(s), total0 = s.total(), launches0 = s.count("cuLaunchKernel");
    long const cur0 = s.count("cuCtxGetCurrent"), id0 = s.count("cuCtxGetId");
    int packed = 0;
    for (auto const& sh : shapes)
    {
        size_t const wsBytes = ulsam_sa_workspace_size(ULSAM_SA_FP32, sh.n, C, sh.h, sh.w, groups);
        st = ulsam_sa_launch_with_constants(x, y, ULSAM_SA_FP32, sh.n, C, sh.h, sh.w, k, sh.reluDw, sh.reluPw, ws,
            wsBytes, stream);
        ulsam_sa_plan_t p;
        ulsam_sa_plan(ULSAM_SA_FP32, sh.n, C, sh.h, sh.w, groups, 16, 4 << 20, wsBytes, &p);
        unsigned dims[7];
        int kind = 0;
        void* gotStream = nullptr;
        std::vector<unsigned char> args(256);
        int const nargs = s.lastLaunch(dims, &kind, &gotStream, args.data(), static_cast<int>(args.size()));
        args.resize(static_cast<size_t>(nargs));
        std::vector<uint64_t> const vals = {reinterpret_cast<uint64_t>(x), base, base + 4 * C, base + 8 * C,
            base + 12 * C, static_cast<uint64_t>(C / groups), static_cast<uint64_t>(sh.h), static_cast<uint64_t>(sh.w),
            static_cast<uint64_t>(groups), static_cast<uint64_t>(p.items), static_cast<uint64_t>(p.split),
            static_cast<uint64_t>(p.chunk), static_cast<uint64_t>(sh.reluDw), static_cast<uint64_t>(sh.reluPw),
            reinterpret_cast<uint64_t>(y), reinterpret_cast<uint64_t>(ws), 0, 0};
        int variantShared = 0;
        for (int i = 0; i < ulsam_images::kNumKernels; ++i)
            if (ulsam_images::kKernels[i].arch == 86 && ulsam_images::kKernels[i].dtype == 0
                && ulsam_images::kKernels[i].variant == p.variant)
                variantShared = ulsam_images::kKernels[i].sharedBytes;
        bool const ok = st == ULSAM_SA_OK && dims[0] == static_cast<unsigned>(p.grid) && dims[1] == 1 && dims[2] == 1
            && dims[3] == static_cast<unsigned>(32 * p.num_warps) && dims[4] == 1 && dims[5] == 1
            && dims[6] == static_cast<unsigned>(variantShared) && gotStream == stream && kind == 1
            && args == expectedArgs(vals);
        packed += ok ? 1 : 0;
        expect(ok, "launch N=" + std::to_string(sh.n) + " " + std::to_string(sh.h) + "x" + std::to_string(sh.w)
                + ": grid " + std::to_string(p.grid) + ", " + std::to_string(32 * p.num_warps)
                + " threads, cubin, 18 arguments packed as the manifest says");
    }
    long const n = static_cast<long>(sizeof(shapes) / sizeof(shapes[0]));
    long const other = (s.total() - total0) - (s.count("cuLaunchKernel") - launches0)
        - (s.count("cuCtxGetCurrent") - cur0) - (s.count("cuCtxGetId") - id0);
    expect(workCalls(s) == work0 && s.count("cuLaunchKernel") - launches0 == n && other == 0,
        "after prepare, launches make no driver call but cuCtxGetCurrent" + std::string(withId ? "/cuCtxGetId" : "")
            + " and cuLaunchKernel (no allocation, copy or module load)");

    st = ulsam_sa_launch_with_constants(x, y, ULSAM_SA_FP16, 1, C, 14, 14, k, 1, 1, ws, 1 << 20, stream);
    expect(st == ULSAM_SA_ERR_NOT_PREPARED && workCalls(s) == work0,
        "fp16 launch while only fp32 is prepared: ULSAM_SA_ERR_NOT_PREPARED, no load inside the launch");
    expect(ulsam_sa_launch_with_constants(x, y, ULSAM_SA_FP32, 1, C, 14, 14, nullptr, 1, 1, ws, 1 << 20, stream)
                == ULSAM_SA_ERR_NOT_PREPARED
            && workCalls(s) == work0,
        "missing constants: ULSAM_SA_ERR_NOT_PREPARED, nothing allocated");
    expect(ulsam_sa_launch_with_constants(x, x, ULSAM_SA_FP32, 1, C, 14, 14, k, 1, 1, ws, 1 << 20, stream)
            == ULSAM_SA_ERR_ARGUMENT,
        "y aliasing x is refused");

    // a new context at the same address (the old one destroyed)
    s.setContext(ctxA, 102);
    st = ulsam_sa_launch_with_constants(x, y, ULSAM_SA_FP32, 1, C, 14, 14, k, 1, 1, ws, 1 << 20, stream);
    if (withId)
    {
        expect(st == ULSAM_SA_ERR_NOT_PREPARED,
            "context re-created at the same address: its unique ID differs, the old modules are not used");
        expect(ulsam_sa_prepare(ULSAM_SA_FP32) == ULSAM_SA_OK && s.count("cuModuleLoadDataEx") == loads + 4,
            "prepare in the new context loads its own modules");
        st = ulsam_sa_launch_with_constants(x, y, ULSAM_SA_FP32, 1, C, 14, 14, k, 1, 1, ws, 1 << 20, stream);
        expect(st == ULSAM_SA_ERR_NOT_PREPARED && std::strstr(ulsam_sa_last_error(), "context 101"),
            "constants of the destroyed context are refused with a sentence naming it");
    }
    else
    {
        expect(st == ULSAM_SA_OK,
            "without cuCtxGetId the cache falls back to the context pointer (a re-created context at the same "
            "address reuses it: the documented limitation of pre-12.0 drivers)");
        s.setContext(reinterpret_cast<void*>(0x2000), 0);
        st = ulsam_sa_launch_with_constants(x, y, ULSAM_SA_FP32, 1, C, 14, 14, k, 1, 1, ws, 1 << 20, stream);
        expect(st == ULSAM_SA_ERR_NOT_PREPARED, "without cuCtxGetId a context at another address is not prepared");
    }
    ulsam_sa_constants_destroy(k);

    // image choice on other GPUs and drivers (new contexts: each GPU has its own)
    struct ImageCase
    {
        int cc, driver, rejectCubins, policy;
        int wantStatus, wantKind, wantArch;
        char const* what;
    };
    ImageCase const cases[] = {
        {80, 12000, 0, ULSAM_SA_IMAGES_AUTO, ULSAM_SA_OK, ULSAM_SA_IMAGE_CUBIN, 80, "sm_80: native cubin"},
        {87, 12060, 0, ULSAM_SA_IMAGES_AUTO, ULSAM_SA_OK, ULSAM_SA_IMAGE_CUBIN, 87, "Jetson Orin sm_87 (JetPack 6): cubin"},
        {90, 13000, 0, ULSAM_SA_IMAGES_AUTO, ULSAM_SA_OK, ULSAM_SA_IMAGE_CUBIN, 90, "sm_90 under a CUDA 13 driver: cubin"},
        {86, 12000, 1, ULSAM_SA_IMAGES_AUTO, ULSAM_SA_OK, ULSAM_SA_IMAGE_PTX, 75,
            "cubin refused by the driver: falls back to the shared sm_75 PTX (ISA 8.0 loads on CUDA 12.0)"},
        {80, 12000, 0, ULSAM_SA_IMAGES_PTX_ONLY, ULSAM_SA_OK, ULSAM_SA_IMAGE_PTX, 80, "PTX-only policy on sm_80: sm_80 PTX"},
        {120, 12080, 0, ULSAM_SA_IMAGES_AUTO, ULSAM_SA_OK, ULSAM_SA_IMAGE_PTX, 75, "sm_120 (no cubin): PTX JIT"},
        {120, 12080, 0, ULSAM_SA_IMAGES_CUBIN_ONLY, ULSAM_SA_ERR_NO_KERNEL, ULSAM_SA_IMAGE_NONE, 0,
            "sm_120 with JIT disabled: ULSAM_SA_ERR_NO_KERNEL"},
        {86, 11080, 1, ULSAM_SA_IMAGES_AUTO, ULSAM_SA_ERR_MODULE_LOAD, ULSAM_SA_IMAGE_NONE, 0,
            "CUDA 11.8 driver, cubin refused: the ISA 8.0 PTX is refused too (ULSAM_SA_ERR_MODULE_LOAD)"},
        {72, 12000, 0, ULSAM_SA_IMAGES_AUTO, ULSAM_SA_ERR_NO_KERNEL, ULSAM_SA_IMAGE_NONE, 0,
            "sm_72 (Xavier): no image, ULSAM_SA_ERR_NO_KERNEL"},
    };
    unsigned long long id = 200;
    uintptr_t addr = 0x10000;
    for (auto const& c : cases)
    {
        s.setDevice(c.cc, 16, 4 << 20);
        s.setDriverVersion(c.driver);
        s.setFailures(c.rejectCubins, 0);
        s.setContext(reinterpret_cast<void*>(addr += 0x1000), ++id);
        ulsam_sa_set_image_policy(c.policy);
        int const got = ulsam_sa_prepare(ULSAM_SA_FP16);
        int kind = -1, arch = -1;
        ulsam_sa_loaded_image(ULSAM_SA_FP16, 2, &kind, &arch);
        expect(got == c.wantStatus && kind == c.wantKind && arch == c.wantArch,
            std::string(c.what) + " (got status " + std::to_string(got) + ", image " + std::to_string(kind) + " sm_"
                + std::to_string(arch) + ")");
    }
    ulsam_sa_set_image_policy(ULSAM_SA_IMAGES_AUTO);
    s.setFailures(0, 0);

    // allocation failure: reported at upload time; the launch then refuses without allocating
    s.setDevice(86, 16, 4 << 20);
    s.setDriverVersion(12000);
    s.setContext(reinterpret_cast<void*>(addr += 0x1000), ++id);
    s.setFailures(0, 1);
    ulsam_sa_constants_t* none = nullptr;
    st = ulsam_sa_constants_create(C, groups, scale.data(), shift.data(), weight.data(), bias.data(), &none);
    expect(st == ULSAM_SA_ERR_CUDA && none == nullptr && std::strstr(ulsam_sa_last_error(), "cuMemAlloc"),
        "constant upload with the device out of memory: ULSAM_SA_ERR_CUDA naming cuMemAlloc");
    s.setFailures(0, 0);
    std::printf("%s: %d failure(s)\n", gStubFailures ? "FAIL" : "PASS", gStubFailures);
    return gStubFailures ? 1 : 0;
}

} // namespace

int main(int argc, char** argv)
{
    std::string const mode = argc > 1 ? argv[1] : "";
    if (mode == "--variants")
    {
        for (int i = 0; i < ulsam_sa_num_variants(); ++i)
        {
            int bw, rows, bc, oc, nw;
            ulsam_sa_variant_info(i, &bw, &rows, &bc, &oc, &nw);
            std::printf("%d %d %d %d %d %d\n", i, bw, rows, bc, oc, nw);
        }
        return 0;
    }
    if (mode == "--kernels")
    {
        for (int i = 0; i < ulsam_sa_num_kernels(); ++i)
        {
            int arch, dtype, variant, nw, shared, target;
            size_t ptxBytes, cubinBytes;
            ulsam_sa_kernel_info(i, &arch, &dtype, &variant, &nw, &shared, &target, &ptxBytes, &cubinBytes);
            std::printf("%d %d %d %d %d %d %zu %zu\n", arch, dtype, variant, nw, shared, target, ptxBytes, cubinBytes);
        }
        return 0;
    }
    if (mode == "--plan")
    {
        std::string line;
        while (std::getline(std::cin, line))
        {
            std::istringstream in(line);
            int dtype, N, C, H, W, g, sm;
            long long l2;
            unsigned long long limit;
            if (!(in >> dtype >> N >> C >> H >> W >> g >> sm >> l2 >> limit))
                continue;
            ulsam_sa_plan_t p;
            int const st = ulsam_sa_plan(dtype, N, C, H, W, g, sm, l2, static_cast<size_t>(limit), &p);
            if (st != ULSAM_SA_OK)
                std::printf("error %d\n", st);
            else
                std::printf("%d %d %d %d %d %d %zu %zu\n", p.variant, p.split, p.chunk, p.items, p.grid, p.num_warps,
                    p.workspace_bytes, ulsam_sa_workspace_size(dtype, N, C, H, W, g));
        }
        return 0;
    }
    if (mode == "--cpu-ref")
    {
        if (argc != 10)
        {
            std::fprintf(stderr, "usage: %s --cpu-ref N C H W groups relu_dw relu_pw seed\n", argv[0]);
            return 2;
        }
        int v[8];
        for (int i = 0; i < 8; ++i)
            v[i] = std::atoi(argv[2 + i]);
        if (v[0] < 1 || v[1] < 1 || v[2] < 1 || v[3] < 1 || v[4] < 1 || v[1] % v[4])
            return 2;
        Problem p = makeProblem(v[0], v[1], v[2], v[3], v[4], v[5], v[6], static_cast<uint64_t>(v[7]));
        for (double y : cpuReference(p, p.x))
            std::printf("%.17g\n", y);
        return 0;
    }
    if (mode == "--launch-no-gpu")
    {
        // Launch with fake pointers: must fail cleanly (no driver here) or with a context error.
        int const st = ulsam_sa_launch(reinterpret_cast<void const*>(0x1000), reinterpret_cast<void*>(0x2000),
            ULSAM_SA_FP32, 1, 8, 4, 4, 2, reinterpret_cast<float const*>(0x3000), reinterpret_cast<float const*>(0x3000),
            reinterpret_cast<float const*>(0x3000), reinterpret_cast<float const*>(0x3000), 1, 1,
            reinterpret_cast<void*>(0x4000), 1 << 20, nullptr);
        std::printf("%d %s: %s\n", st, ulsam_sa_status_string(st), ulsam_sa_last_error());
        return 0;
    }
    if (mode == "--stub")
    {
        if (argc != 3)
        {
            std::fprintf(stderr, "usage: %s --stub <libulsam_cuda_stub.so>\n", argv[0]);
            return 2;
        }
        return stubMain(argv[2]);
    }
    if (mode.empty() || mode == "--bench" || mode.rfind("--images=", 0) == 0)
    {
        bool bench = false;
        int policy = ULSAM_SA_IMAGES_AUTO;
        for (int i = 1; i < argc; ++i)
        {
            std::string const a = argv[i];
            if (a == "--bench")
                bench = true;
            else if (a == "--images=auto")
                policy = ULSAM_SA_IMAGES_AUTO;
            else if (a == "--images=cubin")
                policy = ULSAM_SA_IMAGES_CUBIN_ONLY;
            else if (a == "--images=ptx")
                policy = ULSAM_SA_IMAGES_PTX_ONLY;
            else
            {
                std::fprintf(stderr, "unknown option %s\n", a.c_str());
                return 2;
            }
        }
        return gpuMain(bench, policy);
    }
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
}

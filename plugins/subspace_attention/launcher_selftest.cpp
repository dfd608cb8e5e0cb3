// Self-test for the ULSAM launcher.
//
//   ulsam_sa_selftest                 GPU check: embedded PTX kernel vs the CPU reference below on a
//                                     set of shapes (fp32 + fp16). Exit 0 pass, 1 fail, 77 = skipped
//                                     (no CUDA driver / GPU), 2 usage error.
//   ulsam_sa_selftest --bench         also time the kernel (CUDA-event-free: host wall clock around
//                                     many launches + synchronize) for the MobileNet ULSAM shapes.
//   ulsam_sa_selftest --variants      print the compiled tile-variant table
//   ulsam_sa_selftest --kernels       print the embedded PTX table
//   ulsam_sa_selftest --plan          read "dtype N C H W groups sm_count l2_bytes ws_limit" lines
//                                     from stdin, print "variant split chunk items grid num_warps
//                                     ws_used ws_size" (host only; tests compare with plan.py)
//   ulsam_sa_selftest --cpu-ref N C H W groups relu_dw relu_pw seed
//                                     print the CPU reference output for the deterministic input
//                                     (tests compare it with the NumPy oracle)
#include "launcher.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
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

// ---- fp16 <-> fp32 on the host (round to nearest even) ----
uint16_t toHalf(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t const sign = (x >> 16) & 0x8000u;
    int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (((x >> 23) & 0xff) == 0xff)
        return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
    if (exp >= 31)
        return static_cast<uint16_t>(sign | 0x7c00u);
    if (exp <= 0)
    {
        if (exp < -10)
            return static_cast<uint16_t>(sign);
        mant |= 0x800000u;
        uint32_t const shift = static_cast<uint32_t>(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t const rem = mant & ((1u << shift) - 1);
        uint32_t const mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u)))
            ++half;
        return static_cast<uint16_t>(sign | half);
    }
    uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    uint32_t const rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u)))
        ++half;
    return static_cast<uint16_t>(half);
}

float fromHalf(uint16_t h)
{
    uint32_t const sign = (h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0)
    {
        if (mant == 0)
            x = sign;
        else
        {
            exp = 127 - 15 + 1;
            while (!(mant & 0x400u))
            {
                mant <<= 1;
                --exp;
            }
            x = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    }
    else if (exp == 31)
        x = sign | 0x7f800000u | (mant << 13);
    else
        x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    float f;
    std::memcpy(&f, &x, 4);
    return f;
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

int gpuMain(bool bench)
{
    int st = ulsam_sa_use_device(0);
    if (st == ULSAM_SA_ERR_NO_DRIVER || st == ULSAM_SA_ERR_CUDA)
    {
        std::printf("SKIP: %s: %s\n", ulsam_sa_status_string(st), ulsam_sa_last_error());
        return 77;
    }
    int cc = 0, sms = 0;
    long long l2 = 0;
    char name[256] = {0};
    if ((st = ulsam_sa_device_properties(&cc, &sms, &l2, name, sizeof(name))) != ULSAM_SA_OK)
    {
        std::printf("FAIL: device query: %s\n", ulsam_sa_last_error());
        return 1;
    }
    std::printf("device: %s (sm_%d, %d SMs, L2 %lld KiB)\n", name, cc, sms, l2 / 1024);
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
            int arch, dtype, variant, nw, shared;
            size_t bytes;
            ulsam_sa_kernel_info(i, &arch, &dtype, &variant, &nw, &shared, &bytes);
            std::printf("%d %d %d %d %d %zu\n", arch, dtype, variant, nw, shared, bytes);
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
    if (mode.empty() || mode == "--bench")
        return gpuMain(mode == "--bench");
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
}

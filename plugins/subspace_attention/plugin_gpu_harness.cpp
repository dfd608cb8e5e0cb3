// The plugin on a real GPU, driven the way TensorRT drives it, with no libnvinfer (issue 19, part 2).
//
//   ulsam_sa_plugin_gpu_harness <plugin.so> [--quick] [--onnx FILE...]
//   ulsam_sa_plugin_gpu_harness --fields <plugin.so> FILE.onnx...  host only: the fields each plugin node of
//                                                                  each FILE gives, as TensorRT's parser passes them
//   ulsam_sa_plugin_gpu_harness --reference N C H W G SEED HALF    host only: print the input, fields and
//                                                                  the float64 reference of one case
//
// dlopen()s the plugin, calls setLoggerFinder + getCreators, creates the plugin from ONNX-style fields: seeded
// synthetic ones for the shapes below, and with --onnx the fused nodes of real exported models, loaded the way
// onnx-tensorrt does (onnx_fields.h). Per case it runs TensorRT's build order (supportsFormatCombination,
// getOutputDataTypes, getOutputShapes, configurePlugin with min/opt/max, getWorkspaceSize for max) and runtime
// order (attachToContext on a thread that only made the device's primary context current, onShapeChange,
// enqueue on a created stream with exactly the reported workspace), then: a smaller shape through
// onShapeChange + enqueue; the serialization round trip (getFieldsToSerialize -> createPlugin(kRUNTIME) ->
// attachToContext -> enqueue, bitwise equal); a second context on another thread (bitwise equal); enqueue
// inside CUDA-graph capture and a replay (bitwise equal); enqueue without onShapeChange (an error, a logged
// sentence, nothing written); canaries after the output and the workspace. Outputs are compared with a float64
// port of kernels/reference.py within the judge's element-wise limits (fp32: 1e-4 or 1e-3 relative; fp16: 1e-2).
// The CUDA driver is reached through dlopen (nothing from CUDA is linked). Exit 0 pass, 1 fail, 77 no GPU.
#include "NvInferRuntime.h"
#include "half_float.h"
#include "onnx_fields.h"
#include "trt_test_support.h"

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

using namespace nvinfer1;

namespace
{

// ------------------------------------------------------------------------------------------------ driver
struct Driver
{
#define ULSAM_FN(name) decltype(&name) name##_ = nullptr
    ULSAM_FN(cuInit);
    ULSAM_FN(cuDeviceGet);
    ULSAM_FN(cuDevicePrimaryCtxRetain);
    ULSAM_FN(cuCtxSetCurrent);
    ULSAM_FN(cuMemAlloc);
    ULSAM_FN(cuMemFree);
    ULSAM_FN(cuMemcpyHtoD);
    ULSAM_FN(cuMemcpyDtoH);
    ULSAM_FN(cuMemsetD8);
    ULSAM_FN(cuStreamCreate);
    ULSAM_FN(cuStreamDestroy);
    ULSAM_FN(cuStreamSynchronize);
    ULSAM_FN(cuStreamBeginCapture);
    ULSAM_FN(cuStreamEndCapture);
    ULSAM_FN(cuGraphInstantiateWithFlags);
    ULSAM_FN(cuGraphLaunch);
    ULSAM_FN(cuGraphExecDestroy);
    ULSAM_FN(cuGraphDestroy);
#undef ULSAM_FN
    CUcontext ctx = nullptr;

    bool load()
    {
        void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h)
            return false;
        bool ok = true;
        auto get = [&](auto& fn, char const* sym) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, sym));
            ok = ok && fn != nullptr;
        };
        get(cuInit_, "cuInit");
        get(cuDeviceGet_, "cuDeviceGet");
        get(cuDevicePrimaryCtxRetain_, "cuDevicePrimaryCtxRetain");
        get(cuCtxSetCurrent_, "cuCtxSetCurrent");
        get(cuMemAlloc_, "cuMemAlloc_v2");
        get(cuMemFree_, "cuMemFree_v2");
        get(cuMemcpyHtoD_, "cuMemcpyHtoD_v2");
        get(cuMemcpyDtoH_, "cuMemcpyDtoH_v2");
        get(cuMemsetD8_, "cuMemsetD8_v2");
        get(cuStreamCreate_, "cuStreamCreate");
        get(cuStreamDestroy_, "cuStreamDestroy_v2");
        get(cuStreamSynchronize_, "cuStreamSynchronize");
        get(cuStreamBeginCapture_, "cuStreamBeginCapture_v2");
        get(cuStreamEndCapture_, "cuStreamEndCapture");
        get(cuGraphInstantiateWithFlags_, "cuGraphInstantiateWithFlags");
        get(cuGraphLaunch_, "cuGraphLaunch");
        get(cuGraphExecDestroy_, "cuGraphExecDestroy");
        get(cuGraphDestroy_, "cuGraphDestroy");
        if (!ok || cuInit_(0) != CUDA_SUCCESS)
            return false;
        CUdevice dev = 0;
        return cuDeviceGet_(&dev, 0) == CUDA_SUCCESS && cuDevicePrimaryCtxRetain_(&ctx, dev) == CUDA_SUCCESS
            && makeCurrent();
    }
    // what cudaSetDevice(0) does on a fresh thread
    bool makeCurrent() const
    {
        return cuCtxSetCurrent_(ctx) == CUDA_SUCCESS;
    }
};

Driver gCu;

// ------------------------------------------------------------------------------------------- the op
struct Params
{
    int32_t groups = 1, reluDw = 1, reluPw = 1;
    std::vector<float> scale, shift, weight, bias;
    std::vector<PluginField> list;
    PluginFieldCollection fc{};

    // Seeded synthetic constants for `c` channels in `g` groups, as ONNX-style fields.
    Params(int c, int g, int seed)
        : groups(g)
        , reluDw(1)
        , reluPw(seed % 2)
    {
        uint32_t s = 12345u + 977u * static_cast<uint32_t>(seed);
        auto rnd = [&] {
            s = s * 1664525u + 1013904223u;
            return static_cast<float>((s >> 8) & 0xffff) / 65535.0f;
        };
        for (int i = 0; i < c; ++i)
        {
            scale.push_back(0.5f + rnd());
            shift.push_back(rnd() - 0.5f);
            weight.push_back(2.0f * rnd() - 1.0f);
        }
        for (int k = 0; k < g; ++k)
            bias.push_back(0.2f * rnd());
        list.emplace_back("groups", &groups, PluginFieldType::kINT32, 1);
        list.emplace_back("relu_dw", &reluDw, PluginFieldType::kINT32, 1);
        list.emplace_back("relu_pw", &reluPw, PluginFieldType::kINT32, 1);
        list.emplace_back("dw_scale", scale.data(), PluginFieldType::kFLOAT32, c);
        list.emplace_back("dw_shift", shift.data(), PluginFieldType::kFLOAT32, c);
        list.emplace_back("pw_weight", weight.data(), PluginFieldType::kFLOAT32, c);
        list.emplace_back("pw_bias", bias.data(), PluginFieldType::kFLOAT32, g);
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
    }

    // The fields TensorRT's ONNX parser would pass for a fused node; the reference reads the same values.
    explicit Params(onnx_fields::Fields const& fields)
    {
        fc = fields.collection;
        for (int32_t i = 0; i < fc.nbFields; ++i)
        {
            PluginField const& f = fc.fields[i];
            std::string const name = f.name;
            auto ints = static_cast<int32_t const*>(f.data);
            auto floats = static_cast<float const*>(f.data);
            if (f.type == PluginFieldType::kINT32 && f.length == 1)
            {
                if (name == "groups")
                    groups = ints[0];
                else if (name == "relu_dw")
                    reluDw = ints[0];
                else if (name == "relu_pw")
                    reluPw = ints[0];
            }
            else if (f.type == PluginFieldType::kFLOAT32)
            {
                std::vector<float> v(floats, floats + f.length);
                if (name == "dw_scale")
                    scale = v;
                else if (name == "dw_shift")
                    shift = v;
                else if (name == "pw_weight")
                    weight = v;
                else if (name == "pw_bias")
                    bias = v;
            }
        }
    }
    Params(Params const&) = delete;
};

// float64 port of kernels/reference.py (op_spec's semantics)
std::vector<double> reference(std::vector<double> const& x, Params const& p, int n, int c, int h, int w)
{
    int const g = p.groups, gs = c / g, hw = h * w;
    std::vector<double> a(x.size()), y(x.size());
    for (int b = 0; b < n; ++b)
        for (int ch = 0; ch < c; ++ch)
            for (int i = 0; i < hw; ++i)
            {
                double v = static_cast<double>(p.scale[ch]) * x[(b * c + ch) * hw + i] + p.shift[ch];
                a[(b * c + ch) * hw + i] = p.reluDw ? std::max(v, 0.0) : v;
            }
    std::vector<double> logit(hw);
    for (int b = 0; b < n; ++b)
        for (int k = 0; k < g; ++k)
        {
            for (int yy = 0; yy < h; ++yy)
                for (int xx = 0; xx < w; ++xx)
                {
                    double acc = p.bias[k];
                    for (int ch = k * gs; ch < (k + 1) * gs; ++ch)
                    {
                        double m = -INFINITY;
                        for (int dy = -1; dy <= 1; ++dy)
                            for (int dx = -1; dx <= 1; ++dx)
                            {
                                int const y2 = yy + dy, x2 = xx + dx;
                                if (y2 >= 0 && y2 < h && x2 >= 0 && x2 < w)
                                    m = std::max(m, a[(b * c + ch) * hw + y2 * w + x2]);
                            }
                        acc += static_cast<double>(p.weight[ch]) * m;
                    }
                    logit[yy * w + xx] = p.reluPw ? std::max(acc, 0.0) : acc;
                }
            double mx = -INFINITY, sum = 0.0;
            for (double v : logit)
                mx = std::max(mx, v);
            for (double v : logit)
                sum += std::exp(v - mx);
            for (int ch = k * gs; ch < (k + 1) * gs; ++ch)
                for (int i = 0; i < hw; ++i)
                    y[(b * c + ch) * hw + i] = x[(b * c + ch) * hw + i] * (1.0 + std::exp(logit[i] - mx) / sum);
        }
    return y;
}

constexpr size_t kCanary = 256;
constexpr uint8_t kCanaryByte = 0xA5;

// Device buffers for one shape: input, output + canary, workspace + canary.
struct Buffers
{
    CUdeviceptr x = 0, y = 0, ws = 0;
    size_t xBytes = 0, wsBytes = 0;
    bool alloc(size_t bytes, size_t workspace)
    {
        xBytes = bytes;
        wsBytes = workspace;
        bool ok = gCu.cuMemAlloc_(&x, bytes) == CUDA_SUCCESS && gCu.cuMemAlloc_(&y, bytes + kCanary) == CUDA_SUCCESS
            && gCu.cuMemAlloc_(&ws, workspace + kCanary) == CUDA_SUCCESS;
        ok = ok && gCu.cuMemsetD8_(y, kCanaryByte, bytes + kCanary) == CUDA_SUCCESS
            && gCu.cuMemsetD8_(ws, kCanaryByte, workspace + kCanary) == CUDA_SUCCESS;
        return ok;
    }
    bool canariesIntact() const
    {
        std::vector<uint8_t> a(kCanary), b(kCanary);
        gCu.cuMemcpyDtoH_(a.data(), y + xBytes, kCanary);
        gCu.cuMemcpyDtoH_(b.data(), ws + wsBytes, kCanary);
        for (size_t i = 0; i < kCanary; ++i)
            if (a[i] != kCanaryByte || b[i] != kCanaryByte)
                return false;
        return true;
    }
    std::vector<uint8_t> output() const
    {
        std::vector<uint8_t> out(xBytes);
        gCu.cuMemcpyDtoH_(out.data(), y, xBytes);
        return out;
    }
    ~Buffers()
    {
        for (CUdeviceptr p : {x, y, ws})
            if (p)
                gCu.cuMemFree_(p);
    }
};

struct Case
{
    int n, c, h, w, g;
    bool half;
    std::string label; // where the fields came from (an ONNX file and node), empty for synthetic ones
    std::string name() const
    {
        return std::string(half ? "fp16 " : "fp32 ") + std::to_string(n) + "x" + std::to_string(c) + "x"
            + std::to_string(h) + "x" + std::to_string(w) + " g" + std::to_string(g)
            + (label.empty() ? "" : " " + label);
    }
};

// The input in the tensor's dtype (bytes) and as float64 (what the reference sees: fp16 values rounded first).
void makeInput(Case const& k, int seed, std::vector<uint8_t>& bytes, std::vector<double>& values)
{
    size_t const count = static_cast<size_t>(k.n) * k.c * k.h * k.w;
    uint32_t s = 777u + 31u * static_cast<uint32_t>(seed);
    values.resize(count);
    bytes.resize(count * (k.half ? 2 : 4));
    for (size_t i = 0; i < count; ++i)
    {
        s = s * 1664525u + 1013904223u;
        float v = 4.0f * (static_cast<float>((s >> 8) & 0xffff) / 65535.0f) - 2.0f;
        if (k.half)
        {
            uint16_t hv = toHalf(v);
            std::memcpy(bytes.data() + 2 * i, &hv, 2);
            values[i] = fromHalf(hv);
        }
        else
        {
            std::memcpy(bytes.data() + 4 * i, &v, 4);
            values[i] = v;
        }
    }
}

// The judge's element-wise limits (backends/judge.py: fp32's gate, the limits fp16 is reported against): an element
// passes within atol or within rtol of the reference (tests/test_gpu_proof.py keeps these equal to the judge's).
constexpr double kFp32Atol = 1e-4, kFp32Rtol = 1e-3, kFp16Atol = 1e-2, kFp16Rtol = 1e-2;

bool close(std::vector<uint8_t> const& got, std::vector<double> const& ref, bool half, double* worst)
{
    double const atol = half ? kFp16Atol : kFp32Atol, rtol = half ? kFp16Rtol : kFp32Rtol;
    *worst = 0.0;
    bool ok = true;
    for (size_t i = 0; i < ref.size(); ++i)
    {
        double v;
        if (half)
        {
            uint16_t h;
            std::memcpy(&h, got.data() + 2 * i, 2);
            v = fromHalf(h);
        }
        else
        {
            float f;
            std::memcpy(&f, got.data() + 4 * i, 4);
            v = f;
        }
        double const d = std::fabs(v - ref[i]);
        *worst = std::max(*worst, d);
        if (!(d <= atol || d <= rtol * std::fabs(ref[i])))
            ok = false;
    }
    return ok;
}

PluginTensorDesc tensor(Case const& k, int n, int h, int w)
{
    PluginTensorDesc d{};
    d.type = k.half ? DataType::kHALF : DataType::kFLOAT;
    d.format = TensorFormat::kLINEAR;
    d.dims = dims4(n, k.c, h, w);
    return d;
}

// One shape through onShapeChange + enqueue on `stream`; the output bytes (empty on failure).
std::vector<uint8_t> runShape(IPluginV3OneRuntime* rt, Case const& k, int n, int h, int w, size_t workspace,
    std::vector<uint8_t> const& input, CUstream stream, Buffers& buf, bool* canaries)
{
    size_t const bytes = static_cast<size_t>(n) * k.c * h * w * (k.half ? 2 : 4);
    if (!buf.alloc(bytes, workspace) || gCu.cuMemcpyHtoD_(buf.x, input.data(), bytes) != CUDA_SUCCESS)
        return {};
    PluginTensorDesc in = tensor(k, n, h, w), out = tensor(k, n, h, w);
    if (rt->onShapeChange(&in, 1, &out, 1) != 0)
        return {};
    void const* ins[] = {reinterpret_cast<void const*>(buf.x)};
    void* outs[] = {reinterpret_cast<void*>(buf.y)};
    if (rt->enqueue(&in, &out, ins, outs, reinterpret_cast<void*>(buf.ws), reinterpret_cast<cudaStream_t>(stream))
            != 0
        || gCu.cuStreamSynchronize_(stream) != CUDA_SUCCESS)
        return {};
    *canaries = buf.canariesIntact();
    return buf.output();
}

template <class T>
T* capability(IPluginV3* p, PluginCapabilityType t)
{
    return p ? static_cast<T*>(p->getCapabilityInterface(t)) : nullptr;
}

void runCase(IPluginCreatorV3One* creator, Case const& k, Params const& params, int seed, CaptureLogger& logger,
    bool extras)
{
    std::string const name = k.name();
    IPluginV3* plugin = creator->createPlugin("sa", &params.fc, TensorRTPhase::kBUILD);
    auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    if (!build || !runtime)
    {
        check(false, name + ": createPlugin(kBUILD) with ONNX-style fields");
        return;
    }
    DataType const dt = k.half ? DataType::kHALF : DataType::kFLOAT;
    // ---- build order ----
    DynamicPluginTensorDesc io[2]{};
    for (auto& d : io)
    {
        d.desc.type = dt;
        d.desc.format = TensorFormat::kLINEAR;
        d.desc.dims = dims4(-1, k.c, -1, -1);
        d.min = dims4(1, k.c, 1, 1);
        d.opt = dims4(k.n, k.c, k.h, k.w);
        d.max = dims4(k.n, k.c, k.h, k.w);
    }
    DataType outType = DataType::kINT8;
    DimsExprs inE{}, outE{};
    inE.nbDims = 4;
    alignas(IExprBuilder) unsigned char builderStorage[sizeof(IExprBuilder)] = {};
    bool const buildOk = build->supportsFormatCombination(0, io, 1, 1) && build->supportsFormatCombination(1, io, 1, 1)
        && build->getOutputDataTypes(&outType, 1, &dt, 1) == 0 && outType == dt
        && build->getOutputShapes(&inE, 1, nullptr, 0, &outE, 1, *reinterpret_cast<IExprBuilder*>(builderStorage)) == 0
        && build->configurePlugin(&io[0], 1, &io[1], 1) == 0;
    size_t const workspace = build->getWorkspaceSize(&io[0], 1, &io[1], 1);
    check(buildOk, name + ": build order (formats, types, shapes, configure min/opt/max)");

    // ---- runtime order, on this thread, on a created stream, exactly the reported workspace ----
    CUstream stream = nullptr;
    gCu.cuStreamCreate_(&stream, 0);
    IPluginV3* attached = runtime->attachToContext(nullptr);
    auto* rt = capability<IPluginV3OneRuntime>(attached, PluginCapabilityType::kRUNTIME);
    std::vector<uint8_t> input;
    std::vector<double> values;
    makeInput(k, seed, input, values);
    bool canaries = false;
    Buffers buf;
    std::vector<uint8_t> first = rt ? runShape(rt, k, k.n, k.h, k.w, workspace, input, stream, buf, &canaries)
                                    : std::vector<uint8_t>{};
    double worst = 0.0;
    bool const matches = !first.empty() && close(first, reference(values, params, k.n, k.c, k.h, k.w), k.half, &worst);
    char line[160];
    std::snprintf(line, sizeof line, ": max |diff| %.3g vs the float64 reference; canaries intact", worst);
    check(matches && canaries, name + line);

    if (extras && rt)
    {
        // ---- a smaller shape through onShapeChange + enqueue (the runtime order) ----
        int const n2 = std::max(1, k.n / 2), h2 = std::max(1, k.h - 1), w2 = std::max(1, k.w - 2);
        Case const small{n2, k.c, h2, w2, k.g, k.half, k.label};
        std::vector<uint8_t> in2;
        std::vector<double> v2;
        makeInput(small, seed + 1, in2, v2);
        Buffers b2;
        bool c2 = false;
        std::vector<uint8_t> o2 = runShape(rt, small, n2, h2, w2, workspace, in2, stream, b2, &c2);
        double w2worst = 0.0;
        check(!o2.empty() && c2 && close(o2, reference(v2, params, n2, k.c, h2, w2), k.half, &w2worst),
            name + ": a smaller shape after the first (onShapeChange, enqueue)");

        // ---- serialization round trip ----
        auto* core = capability<IPluginV3OneCore>(plugin, PluginCapabilityType::kCORE);
        PluginFieldCollection const* fields = runtime->getFieldsToSerialize();
        IPluginV3* restored = fields ? creator->createPlugin("sa", fields, TensorRTPhase::kRUNTIME) : nullptr;
        auto* rrt = capability<IPluginV3OneRuntime>(restored, PluginCapabilityType::kRUNTIME);
        IPluginV3* rattached = rrt ? rrt->attachToContext(nullptr) : nullptr;
        auto* rart = capability<IPluginV3OneRuntime>(rattached, PluginCapabilityType::kRUNTIME);
        Buffers b3;
        bool c3 = false;
        std::vector<uint8_t> o3
            = rart ? runShape(rart, k, k.n, k.h, k.w, workspace, input, stream, b3, &c3) : std::vector<uint8_t>{};
        check(core != nullptr && !o3.empty() && c3 && o3 == first,
            name + ": serialized fields -> createPlugin(kRUNTIME) -> attach -> enqueue, bitwise equal");

        // ---- a second execution context on another thread ----
        std::vector<uint8_t> o4;
        bool c4 = false;
        std::thread other([&] {
            if (!gCu.makeCurrent())
                return;
            IPluginV3* second = runtime->attachToContext(nullptr);
            auto* srt = capability<IPluginV3OneRuntime>(second, PluginCapabilityType::kRUNTIME);
            CUstream s2 = nullptr;
            gCu.cuStreamCreate_(&s2, 0);
            Buffers b4;
            if (srt)
                o4 = runShape(srt, k, k.n, k.h, k.w, workspace, input, s2, b4, &c4);
            gCu.cuStreamDestroy_(s2);
            delete second;
        });
        other.join();
        check(!o4.empty() && c4 && o4 == first, name + ": a second context on another thread, bitwise equal");

        // ---- enqueue inside CUDA-graph capture, then a replay ----
        {
            Buffers b5;
            size_t const bytes = input.size();
            bool ok = b5.alloc(bytes, workspace) && gCu.cuMemcpyHtoD_(b5.x, input.data(), bytes) == CUDA_SUCCESS;
            PluginTensorDesc in = tensor(k, k.n, k.h, k.w), out = tensor(k, k.n, k.h, k.w);
            ok = ok && rt->onShapeChange(&in, 1, &out, 1) == 0;
            void const* ins[] = {reinterpret_cast<void const*>(b5.x)};
            void* outs[] = {reinterpret_cast<void*>(b5.y)};
            CUgraph graph = nullptr;
            CUgraphExec exec = nullptr;
            ok = ok && gCu.cuStreamBeginCapture_(stream, CU_STREAM_CAPTURE_MODE_GLOBAL) == CUDA_SUCCESS;
            ok = ok && rt->enqueue(&in, &out, ins, outs, reinterpret_cast<void*>(b5.ws),
                           reinterpret_cast<cudaStream_t>(stream)) == 0;
            ok = gCu.cuStreamEndCapture_(stream, &graph) == CUDA_SUCCESS && ok;
            ok = ok && gCu.cuGraphInstantiateWithFlags_(&exec, graph, 0) == CUDA_SUCCESS;
            for (int i = 0; ok && i < 2; ++i)
                ok = gCu.cuGraphLaunch_(exec, stream) == CUDA_SUCCESS;
            ok = ok && gCu.cuStreamSynchronize_(stream) == CUDA_SUCCESS;
            check(ok && b5.canariesIntact() && b5.output() == first,
                name + ": enqueue captured in a CUDA graph, replayed twice, bitwise equal");
            if (exec)
                gCu.cuGraphExecDestroy_(exec);
            if (graph)
                gCu.cuGraphDestroy_(graph);
        }

        // ---- enqueue without onShapeChange: an error, a logged sentence, nothing written ----
        {
            IPluginV3* fresh = runtime->attachToContext(nullptr);
            auto* frt = capability<IPluginV3OneRuntime>(fresh, PluginCapabilityType::kRUNTIME);
            Buffers b6;
            bool ok = frt && b6.alloc(input.size(), workspace);
            size_t const logged = logger.messages.size();
            PluginTensorDesc in = tensor(k, k.n, k.h, k.w), out = tensor(k, k.n, k.h, k.w);
            void const* ins[] = {reinterpret_cast<void const*>(b6.x)};
            void* outs[] = {reinterpret_cast<void*>(b6.y)};
            int32_t const rc = ok ? frt->enqueue(&in, &out, ins, outs, reinterpret_cast<void*>(b6.ws),
                                        reinterpret_cast<cudaStream_t>(stream))
                                  : 0;
            gCu.cuStreamSynchronize_(stream);
            std::vector<uint8_t> untouched = ok ? b6.output() : std::vector<uint8_t>{};
            bool const clean = !untouched.empty()
                && std::all_of(untouched.begin(), untouched.end(), [](uint8_t b) { return b == kCanaryByte; });
            check(ok && rc != 0 && logger.messages.size() > logged && clean,
                name + ": enqueue without onShapeChange fails, logs a sentence, launches nothing");
            delete fresh;
        }
        delete rattached;
        delete restored;
    }
    gCu.cuStreamDestroy_(stream);
    delete attached;
    delete plugin;
}

// The plugin nodes of one ONNX file as harness cases: shape from the graph (the batch replaced by `batch`),
// fields as TensorRT's ONNX parser passes them. Checks the node routes to this creator (op_type = plugin name,
// plugin_version and plugin_namespace attributes, defaults "1" and "", equal to the creator's).
struct OnnxCase
{
    Case shape;
    onnx_fields::Fields fields;
};

std::vector<OnnxCase> onnxCases(std::string const& path, IPluginCreatorV3One* creator, int batch, bool half)
{
    onnx_fields::Model const model = onnx_fields::readModel(path);
    std::vector<OnnxCase> out;
    std::string const file = path.substr(path.find_last_of('/') + 1);
    for (auto const& node : model.nodes)
    {
        if (node.opType != creator->getPluginName())
            continue;
        std::string const where = file + ":" + node.name;
        bool const routes = node.stringAttr("plugin_version", "1") == creator->getPluginVersion()
            && node.stringAttr("plugin_namespace", "") == creator->getPluginNamespace();
        check(routes, where + ": op_type, plugin_version and plugin_namespace name this creator");
        auto shape = node.inputs.empty() ? model.shapes.end() : model.shapes.find(node.inputs[0]);
        if (shape == model.shapes.end() || shape->second.size() != 4 || shape->second[1] < 1 || shape->second[2] < 1
            || shape->second[3] < 1)
        {
            check(false, where + ": the input's C, H and W are in the graph");
            continue;
        }
        OnnxCase c;
        onnx_fields::loadFields(node, *creator->getFieldNames(), c.fields);
        check(c.fields.missing.empty(), where + ": every field the creator lists is an attribute of the node");
        Params const p(c.fields);
        auto const& d = shape->second;
        c.shape = Case{batch, static_cast<int>(d[1]), static_cast<int>(d[2]), static_cast<int>(d[3]), p.groups, half,
            where};
        out.push_back(std::move(c));
    }
    return out;
}

// host only: the fields a file's plugin nodes give, one line per node and field (tests compare them with onnx)
void printFields(IPluginCreatorV3One* creator, std::string const& path)
{
    for (auto const& c : onnxCases(path, creator, 1, false))
    {
        std::printf("NODE %s C=%d H=%d W=%d\n", c.shape.label.c_str(), c.shape.c, c.shape.h, c.shape.w);
        for (int32_t i = 0; i < c.fields.collection.nbFields; ++i)
        {
            PluginField const& f = c.fields.collection.fields[i];
            std::printf("FIELD %s %d %d", f.name, static_cast<int>(f.type), f.length);
            for (int32_t j = 0; j < f.length; ++j)
            {
                if (f.type == PluginFieldType::kFLOAT32)
                    std::printf(" %.9g", static_cast<double>(static_cast<float const*>(f.data)[j]));
                else if (f.type == PluginFieldType::kINT32)
                    std::printf(" %d", static_cast<int32_t const*>(f.data)[j]);
                else
                    std::printf(" %d", static_cast<int>(static_cast<char const*>(f.data)[j]));
            }
            std::printf("\n");
        }
    }
}

IPluginCreatorV3One* loadCreator(char const* library, Finder& finder)
{
    ulsam_test::LoadedPlugin const plugin = loadPlugin(library, finder);
    auto* creator = plugin.creators.empty() ? nullptr : static_cast<IPluginCreatorV3One*>(plugin.creators[0]);
    check(creator != nullptr, "one IPluginCreatorV3One");
    return creator;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::fprintf(stderr,
            "usage: %s <plugin.so> [--quick] [--onnx FILE...]\n"
            "       %s --fields <plugin.so> FILE.onnx...\n"
            "       %s --reference N C H W G SEED HALF\n",
            argv[0], argv[0], argv[0]);
        return 2;
    }
    if (std::strcmp(argv[1], "--reference") == 0 && argc == 9)
    {
        // host only: this harness's input, fields and float64 reference for one case, one number per line
        // (section headers "x", "scale", "shift", "weight", "bias", "relu_pw", "y"); tests compare with NumPy
        Case const k{std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]), std::atoi(argv[6]),
            std::atoi(argv[8]) != 0, ""};
        int const seed = std::atoi(argv[7]);
        Params params(k.c, k.g, seed);
        std::vector<uint8_t> bytes;
        std::vector<double> x;
        makeInput(k, seed, bytes, x);
        auto dump = [](char const* what, auto const& values) {
            std::printf("%s\n", what);
            for (auto v : values)
                std::printf("%.17g\n", static_cast<double>(v));
        };
        dump("x", x);
        dump("scale", params.scale);
        dump("shift", params.shift);
        dump("weight", params.weight);
        dump("bias", params.bias);
        dump("relu_pw", std::vector<int>{params.reluPw});
        dump("y", reference(x, params, k.n, k.c, k.h, k.w));
        return 0;
    }
    CaptureLogger logger;
    Finder finder(&logger);
    if (std::strcmp(argv[1], "--fields") == 0 && argc >= 4)
    {
        IPluginCreatorV3One* creator = loadCreator(argv[2], finder);
        if (!creator)
            return 1;
        for (int i = 3; i < argc; ++i)
        {
            try
            {
                printFields(creator, argv[i]);
            }
            catch (std::exception const& e)
            {
                check(false, std::string(argv[i]) + ": " + e.what());
            }
        }
        return gFailures ? 1 : 0;
    }
    bool quick = false;
    std::vector<std::string> onnxFiles;
    for (int i = 2; i < argc; ++i)
    {
        if (std::strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (std::strcmp(argv[i], "--onnx") == 0)
        {
            while (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0)
                onnxFiles.emplace_back(argv[++i]);
        }
        else
        {
            std::fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!gCu.load())
    {
        std::printf("SKIP no CUDA driver or GPU\n");
        return 77;
    }
    IPluginCreatorV3One* creator = loadCreator(argv[1], finder);
    if (!creator)
        return 1;
    // the ULSAM shapes of the paper configurations at 224 (MV2: 96 ch at 14x14, 160 ch at 7x7; MV1: 512 at
    // 14x14, 1024 at 7x7), every group count, an odd map, a 1x1 map, batches 1 to 64, fp32 and fp16
    std::vector<Case> cases;
    for (bool half : {false, true})
    {
        for (int g : {1, 2, 4, 8, 16})
            cases.push_back({1, 96, 14, 14, g, half, ""});
        cases.push_back({8, 160, 7, 7, 4, half, ""});
        cases.push_back({2, 512, 14, 14, 4, half, ""});
        cases.push_back({1, 1024, 7, 7, 8, half, ""});
        cases.push_back({3, 24, 13, 11, 4, half, ""});
        cases.push_back({4, 32, 1, 1, 2, half, ""});
        if (!quick)
            cases.push_back({64, 96, 14, 14, 4, half, ""});
    }
    int seed = 0;
    for (Case const& k : cases)
    {
        bool const extras = seed < 2 || k.g == 4;
        Params const params(k.c, k.g, seed);
        runCase(creator, k, params, seed++, logger, extras);
    }
    // the fused nodes of real exported models, fields as TensorRT's ONNX parser passes them; batch 1, 8, 64 in
    // turn; the first node of each dtype also through the runtime, serialization, thread and graph checks
    int const batches[] = {1, 8, 64};
    int index = 0;
    for (bool half : {false, true})
    {
        bool first = true;
        for (auto const& file : onnxFiles)
        {
            std::vector<OnnxCase> found;
            try
            {
                found = onnxCases(file, creator, batches[index % 3], half);
            }
            catch (std::exception const& e)
            {
                check(false, file + ": " + e.what());
                continue;
            }
            check(!found.empty(), file + ": holds at least one " + std::string(creator->getPluginName()) + " node");
            for (auto const& c : found)
            {
                Case k = c.shape;
                k.n = batches[index++ % 3];
                Params const params(c.fields);
                runCase(creator, k, params, seed++, logger, first);
                first = false;
            }
        }
    }
    std::printf("%s: %d failure(s)\n", gFailures ? "FAILED" : "PASSED", gFailures);
    return gFailures ? 1 : 0;
}

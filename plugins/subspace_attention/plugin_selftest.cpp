// Host-side test of the TensorRT plugin library WITHOUT a TensorRT runtime or GPU:
// dlopen()s the plugin like IPluginRegistry::loadLibrary / trtexec --dynamicPlugins do, calls
// setLoggerFinder + getCreators, and drives the creator and plugin through the IPluginV3 calls
// TensorRT makes while parsing ONNX (INT -> kINT32, FLOATS -> kFLOAT32 fields), building
// (formats, shapes, workspace), serializing (fields round trip) and running.
//
//   ulsam_sa_plugin_selftest <plugin.so>                     without a driver: enqueue fails cleanly
//   ulsam_sa_plugin_selftest <plugin.so> --stub <stub.so>    the runtime lifecycle against the stub
//                                                            driver (driver_stub.cpp): attachToContext
//                                                            uploads, onShapeChange loads, enqueue
//                                                            only launches, failures are logged
// Prints one line per check; exit 0 when all pass.
#include "NvInferRuntime.h"
#include "launcher.h"
#include "trt_test_support.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

using namespace nvinfer1;

namespace
{

struct Fields
{
    int32_t groups, reluDw, reluPw;
    std::vector<float> scale, shift, weight, bias;
    std::vector<PluginField> list;
    PluginFieldCollection fc{};

    Fields(int c, int g)
        : groups(g)
        , reluDw(1)
        , reluPw(0)
    {
        for (int i = 0; i < c; ++i)
        {
            scale.push_back(0.5f + 0.01f * i);
            shift.push_back(-0.1f * (i % 3));
            weight.push_back(0.2f * ((i % 5) - 2));
        }
        for (int k = 0; k < g; ++k)
            bias.push_back(0.1f * k);
        rebuild();
    }
    void rebuild()
    {
        list.clear();
        list.emplace_back("groups", &groups, PluginFieldType::kINT32, 1);
        list.emplace_back("relu_dw", &reluDw, PluginFieldType::kINT32, 1);
        list.emplace_back("relu_pw", &reluPw, PluginFieldType::kINT32, 1);
        list.emplace_back("dw_scale", scale.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(scale.size()));
        list.emplace_back("dw_shift", shift.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(shift.size()));
        list.emplace_back("pw_weight", weight.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(weight.size()));
        list.emplace_back("pw_bias", bias.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(bias.size()));
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
    }
};

DynamicPluginTensorDesc desc(DataType t, TensorFormat f, Dims d, Dims mn, Dims mx)
{
    DynamicPluginTensorDesc x{};
    x.desc.type = t;
    x.desc.format = f;
    x.desc.dims = d;
    x.min = mn;
    x.max = mx;
    return x;
}


} // namespace

struct StubDriver
{
    void (*setDevice)(int, int, int){nullptr};
    void (*setDriverVersion)(int){nullptr};
    void (*setContext)(void*, unsigned long long){nullptr};
    void (*setFailures)(int, int){nullptr};
    long (*count)(char const*){nullptr};
    void (*lastModule)(int*, int*){nullptr};

    bool load(char const* path)
    {
        void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            return false;
        auto get = [&](auto& fn, char const* name) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
            return fn != nullptr;
        };
        return get(setDevice, "ulsam_stub_set_device") && get(setDriverVersion, "ulsam_stub_set_driver_version")
            && get(setContext, "ulsam_stub_set_context") && get(setFailures, "ulsam_stub_set_failures")
            && get(count, "ulsam_stub_count") && get(lastModule, "ulsam_stub_last_module");
    }
    long deviceWork() const
    {
        return count("cuModuleLoadDataEx") + count("cuModuleGetFunction") + count("cuMemAlloc_v2")
            + count("cuMemcpyHtoD_v2") + count("cuMemFree_v2");
    }
};

// attachToContext / onShapeChange / enqueue against the stub driver (an sm_87 GPU, CUDA 12.6).
void stubLifecycle(StubDriver& s, IPluginV3* plugin, CaptureLogger& logger)
{
    s.setDevice(87, 16, 4 << 20);
    s.setDriverVersion(12060);
    s.setContext(reinterpret_cast<void*>(0x1000), 7);
    s.setFailures(0, 0);
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    long const alloc0 = s.count("cuMemAlloc_v2"), copy0 = s.count("cuMemcpyHtoD_v2");
    IPluginV3* attached = runtime->attachToContext(nullptr);
    check(attached != nullptr && s.count("cuMemAlloc_v2") == alloc0 + 1 && s.count("cuMemcpyHtoD_v2") == copy0 + 1,
        "attachToContext uploads the constants: one allocation, one copy");
    if (!attached)
        return;
    auto* rt = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc in{}, out{};
    in.type = out.type = DataType::kHALF;
    in.format = out.format = TensorFormat::kLINEAR;
    in.dims = out.dims = dims4(2, 12, 7, 7);
    long const loads0 = s.count("cuModuleLoadDataEx");
    int kind = 0, arch = 0;
    int32_t rc = rt->onShapeChange(&in, 1, &out, 1);
    s.lastModule(&kind, &arch);
    check(rc == 0 && s.count("cuModuleLoadDataEx") == loads0 + ulsam_sa_num_variants() && kind == 1 && arch == 87
            && s.count("cuMemAlloc_v2") == alloc0 + 1,
        "onShapeChange(fp16) loads the fp16 modules (native sm_87 cubins), allocates nothing more");
    in.dims = out.dims = dims4(8, 12, 56, 56);
    long const work0 = s.deviceWork();
    rc = rt->onShapeChange(&in, 1, &out, 1);
    check(rc == 0 && s.deviceWork() == work0, "a second onShapeChange does no device work");
    void const* ins[] = {reinterpret_cast<void const*>(0x100000)};
    void* outs[] = {reinterpret_cast<void*>(0x200000)};
    void* ws = reinterpret_cast<void*>(0x300000);
    long const launches0 = s.count("cuLaunchKernel");
    bool allOk = true;
    for (int i = 0; i < 3; ++i)
        allOk = allOk && rt->enqueue(&in, &out, ins, outs, ws, reinterpret_cast<cudaStream_t>(0x77)) == 0;
    check(allOk && s.count("cuLaunchKernel") == launches0 + 3 && s.deviceWork() == work0,
        "enqueue (fp16) x3: three launches, no allocation, copy or module load");
    in.type = out.type = DataType::kFLOAT;
    size_t mark = logger.messages.size();
    rc = rt->enqueue(&in, &out, ins, outs, ws, nullptr);
    check(rc != 0 && s.deviceWork() == work0 && logger.sawSince(mark, "not loaded in this CUDA context"),
        "enqueue(fp32) without onShapeChange(fp32): error + logged sentence, nothing loaded in enqueue");
    delete attached;

    s.setContext(reinterpret_cast<void*>(0x2000), 8);
    s.setFailures(0, 1); // the device is out of memory
    mark = logger.messages.size();
    IPluginV3* starved = runtime->attachToContext(nullptr);
    check(starved != nullptr && logger.sawSince(mark, "attachToContext: uploading the folded constants"),
        "attachToContext with no device memory: returns the clone, logs why");
    if (!starved)
        return;
    auto* rt2 = static_cast<IPluginV3OneRuntime*>(starved->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    in.type = out.type = DataType::kHALF;
    mark = logger.messages.size();
    check(rt2->onShapeChange(&in, 1, &out, 1) != 0 && logger.sawSince(mark, "onShapeChange: uploading"),
        "onShapeChange retries the upload and fails with a logged sentence");
    long const allocs = s.count("cuMemAlloc_v2"), work1 = s.deviceWork();
    mark = logger.messages.size();
    rc = rt2->enqueue(&in, &out, ins, outs, ws, nullptr);
    check(rc != 0 && s.count("cuMemAlloc_v2") == allocs && s.deviceWork() == work1
            && logger.sawSince(mark, "constants are not on the GPU"),
        "enqueue without constants: error + logged sentence, no allocation attempted");
    s.setFailures(0, 0);
    delete starved;
}

int main(int argc, char** argv)
{
    bool const withStub = argc == 4 && std::string(argv[2]) == "--stub";
    if (argc != 2 && !withStub)
    {
        std::fprintf(stderr, "usage: %s <plugin.so> [--stub <libulsam_cuda_stub.so>]\n", argv[0]);
        return 2;
    }
    StubDriver stub;
    if (withStub)
    {
        setenv("ULSAM_SA_CUDA_DRIVER", argv[3], 1); // before the plugin's launcher first needs the driver
        check(stub.load(argv[3]), std::string("stub driver ") + argv[3]);
    }
    CaptureLogger logger;
    Finder finder(&logger);
    ulsam_test::LoadedPlugin const library = loadPlugin(argv[1], finder);
    if (library.handle)
        check(dlsym(library.handle, "ulsam_sa_launch") == nullptr, "launcher symbols stay private to the plugin");
    check(library.creators.size() == 1 && library.creators[0], "one creator");
    if (library.creators.empty() || !library.creators[0])
        return 1;
    auto* creator = static_cast<IPluginCreatorV3One*>(library.creators[0]);
    check(std::string(creator->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE", "creator kind PLUGIN CREATOR_V3ONE");
    check(std::string(creator->getPluginName()) == "SubspaceAttention", "name SubspaceAttention");
    check(std::string(creator->getPluginVersion()) == "1", "version 1");
    check(std::string(creator->getPluginNamespace()) == "ulsam", "namespace ulsam");
    PluginFieldCollection const* names = creator->getFieldNames();
    char const* expected[] = {"groups", "relu_dw", "relu_pw", "dw_scale", "dw_shift", "pw_weight", "pw_bias"};
    bool namesOk = names && names->nbFields == 7;
    for (int i = 0; namesOk && i < 7; ++i)
        namesOk = std::strcmp(names->fields[i].name, expected[i]) == 0
            && names->fields[i].type == (i < 3 ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32);
    check(namesOk, "field names/types as the ONNX parser passes them");

    // ---- bad fields are rejected with a logged reason ----
    {
        Fields f(12, 5); // 12 % 5 != 0
        check(creator->createPlugin("bad", &f.fc, TensorRTPhase::kBUILD) == nullptr && logger.saw("multiple of groups"),
            "rejects C % groups != 0");
        Fields g(12, 3);
        g.bias.pop_back();
        g.rebuild();
        check(creator->createPlugin("bad2", &g.fc, TensorRTPhase::kBUILD) == nullptr && logger.saw("pw_bias"),
            "rejects pw_bias of the wrong length");
        Fields h(12, 3);
        h.list.erase(h.list.begin() + 3);
        h.fc.nbFields = static_cast<int32_t>(h.list.size());
        h.fc.fields = h.list.data();
        check(creator->createPlugin("bad3", &h.fc, TensorRTPhase::kBUILD) == nullptr && logger.saw("dw_scale"),
            "rejects a missing dw_scale");
    }

    Fields f(12, 3);
    IPluginV3* plugin = creator->createPlugin("sa0", &f.fc, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin with ONNX-style fields");
    if (!plugin)
        return 1;
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, "core/build/runtime capabilities");
    check(std::string(core->getPluginName()) == "SubspaceAttention" && std::string(core->getPluginNamespace()) == "ulsam",
        "plugin reports name + namespace");
    check(build->getNbOutputs() == 1, "one output");

    DataType in = DataType::kHALF, out = DataType::kFLOAT;
    check(build->getOutputDataTypes(&out, 1, &in, 1) == 0 && out == DataType::kHALF, "output dtype = input dtype");

    Dims const d = dims4(-1, 12, -1, -1), mn = dims4(1, 12, 1, 1), mx = dims4(8, 12, 56, 56);
    DynamicPluginTensorDesc io[2] = {desc(DataType::kFLOAT, TensorFormat::kLINEAR, d, mn, mx),
        desc(DataType::kFLOAT, TensorFormat::kLINEAR, d, mn, mx)};
    check(build->supportsFormatCombination(0, io, 1, 1) && build->supportsFormatCombination(1, io, 1, 1),
        "fp32 linear supported");
    io[0].desc.type = io[1].desc.type = DataType::kHALF;
    check(build->supportsFormatCombination(0, io, 1, 1) && build->supportsFormatCombination(1, io, 1, 1),
        "fp16 linear supported");
    io[1].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(1, io, 1, 1), "mixed in/out dtypes rejected");
    io[1].desc.type = DataType::kHALF;
    io[0].desc.format = TensorFormat::kHWC8;
    check(!build->supportsFormatCombination(0, io, 1, 1), "non-linear format rejected");
    io[0].desc.format = TensorFormat::kLINEAR;
    io[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, io, 1, 1), "int8 rejected");
    io[0].desc.type = DataType::kHALF;

    check(build->configurePlugin(&io[0], 1, &io[1], 1) == 0, "configurePlugin dynamic N/H/W");
    DynamicPluginTensorDesc wrongC[2] = {io[0], io[1]};
    wrongC[0].desc.dims.d[1] = 16;
    check(build->configurePlugin(&wrongC[0], 1, &wrongC[1], 1) != 0 && logger.saw("channels"),
        "configurePlugin rejects a channel mismatch");

    size_t const ws = build->getWorkspaceSize(&io[0], 1, &io[1], 1);
    check(ws == ulsam_sa_workspace_size(ULSAM_SA_FP16, 8, 12, 56, 56, 3) && ws >= 56 * 56 * 4,
        "workspace sized for the profile max (" + std::to_string(ws) + " bytes)");

    // getOutputShapes copies the input expressions (the builder is not used)
    DimsExprs inE{}, outE{};
    inE.nbDims = 4;
    alignas(IExprBuilder) unsigned char builderStorage[sizeof(IExprBuilder)] = {};
    check(build->getOutputShapes(&inE, 1, nullptr, 0, &outE, 1, *reinterpret_cast<IExprBuilder*>(builderStorage)) == 0
            && outE.nbDims == 4,
        "output shape = input shape");

    // ---- serialization round trip ----
    PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
    check(ser && ser->nbFields == 7, "7 fields serialized");
    IPluginV3* restored = creator->createPlugin("sa0", ser, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "plugin re-created from serialized fields");
    if (restored)
    {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* ser2 = rt2->getFieldsToSerialize();
        bool same = ser2 && ser2->nbFields == ser->nbFields;
        for (int i = 0; same && i < ser->nbFields; ++i)
        {
            PluginField const &a = ser->fields[i], &b = ser2->fields[i];
            size_t const bytes = static_cast<size_t>(a.length) * 4;
            same = std::strcmp(a.name, b.name) == 0 && a.type == b.type && a.length == b.length
                && std::memcmp(a.data, b.data, bytes) == 0;
        }
        check(same, "serialized fields identical after the round trip");
        delete restored;
    }
    IPluginV3* cloned = plugin->clone();
    check(cloned != nullptr, "clone");
    delete cloned;

    // ---- runtime: without a GPU enqueue fails cleanly and says why ----
    PluginTensorDesc rin{}, rout{};
    rin.type = rout.type = DataType::kFLOAT;
    rin.format = rout.format = TensorFormat::kLINEAR;
    rin.dims = rout.dims = dims4(2, 12, 7, 7);
    PluginTensorDesc badIn = rin;
    badIn.dims.d[1] = 16;
    check(runtime->onShapeChange(&badIn, 1, &rout, 1) != 0, "onShapeChange rejects a channel mismatch");
    if (withStub)
        stubLifecycle(stub, plugin, logger);
    else if (ulsam_sa_use_device(0) != ULSAM_SA_OK)
    {
        size_t const mark = logger.messages.size();
        IPluginV3* attached = runtime->attachToContext(nullptr);
        check(attached != nullptr && logger.sawSince(mark, "CUDA driver"),
            "attachToContext without a GPU still returns a clone and logs why the upload failed");
        auto* rt = attached ? static_cast<IPluginV3OneRuntime*>(
                       attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
                            : nullptr;
        check(rt && rt->onShapeChange(&rin, 1, &rout, 1) != 0, "onShapeChange without a GPU fails (upload retried)");
        void const* ins[] = {reinterpret_cast<void const*>(0x10000)};
        void* outs[] = {reinterpret_cast<void*>(0x20000)};
        int32_t const rc = rt ? rt->enqueue(&rin, &rout, ins, outs, reinterpret_cast<void*>(0x30000), nullptr) : 0;
        check(rc != 0 && logger.saw("constants are not on the GPU"),
            "enqueue without a GPU returns an error and logs the reason");
        delete attached;
    }
    else
    {
        std::printf("INFO GPU present: run ulsam_sa_selftest for the numeric check\n");
    }
    delete plugin;
    std::printf("%s: %d failure(s)\n", gFailures ? "FAIL" : "PASS", gFailures);
    return gFailures ? 1 : 0;
}

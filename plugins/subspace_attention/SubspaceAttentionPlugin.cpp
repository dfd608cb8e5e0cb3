// TensorRT IPluginV3 plugin for the fused ULSAM subspace attention; see SubspaceAttentionPlugin.h.
#include "SubspaceAttentionPlugin.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <utility>

using namespace nvinfer1;

namespace ulsam
{
namespace
{

// ---- logging through the logger TensorRT hands us (setLoggerFinder) ----
class LoggerFinderHolder
{
public:
    void set(ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        if (mFinder == nullptr && finder != nullptr)
            mFinder = finder;
    }
    ILogger* get()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mFinder ? mFinder->findLogger() : nullptr;
    }

private:
    std::mutex mMutex;
    ILoggerFinder* mFinder{nullptr};
};

LoggerFinderHolder gLoggerFinder;

void logMessage(ILogger::Severity severity, std::string const& msg) noexcept
{
    try
    {
        std::string const text = std::string("[ulsam::SubspaceAttention] ") + msg;
        if (ILogger* logger = gLoggerFinder.get())
            logger->log(severity, text.c_str());
        else if (severity <= ILogger::Severity::kWARNING)
            std::fprintf(stderr, "%s\n", text.c_str());
    }
    catch (...)
    {
    }
}

void logError(std::string const& msg) noexcept
{
    logMessage(ILogger::Severity::kERROR, msg);
}

int32_t dtypeCode(DataType t)
{
    return t == DataType::kHALF ? ULSAM_SA_FP16 : ULSAM_SA_FP32;
}

constexpr char const* kFieldGroups = "groups";
constexpr char const* kFieldReluDw = "relu_dw";
constexpr char const* kFieldReluPw = "relu_pw";
constexpr char const* kFieldDwScale = "dw_scale";
constexpr char const* kFieldDwShift = "dw_shift";
constexpr char const* kFieldPwWeight = "pw_weight";
constexpr char const* kFieldPwBias = "pw_bias";

bool readInt(PluginField const& f, int32_t& out)
{
    if (f.data == nullptr || f.length < 1)
        return false;
    switch (f.type)
    {
    case PluginFieldType::kINT32: out = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: out = static_cast<int32_t>(*static_cast<int64_t const*>(f.data)); return true;
    case PluginFieldType::kINT16: out = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT8: out = *static_cast<int8_t const*>(f.data); return true;
    default: return false;
    }
}

bool readFloats(PluginField const& f, std::vector<float>& out)
{
    out.clear();
    if (f.length < 0 || (f.length > 0 && f.data == nullptr))
        return false;
    switch (f.type)
    {
    case PluginFieldType::kFLOAT32:
    {
        auto const* p = static_cast<float const*>(f.data);
        out.assign(p, p + f.length);
        return true;
    }
    case PluginFieldType::kFLOAT64:
    {
        auto const* p = static_cast<double const*>(f.data);
        for (int32_t i = 0; i < f.length; ++i)
            out.push_back(static_cast<float>(p[i]));
        return true;
    }
    default: return false;
    }
}

} // namespace

std::string SubspaceAttentionParams::validate() const
{
    std::ostringstream err;
    int32_t const c = channels();
    if (groups < 1)
        err << "groups must be >= 1 (got " << groups << ")";
    else if (c < 1)
        err << "dw_scale is empty";
    else if (c % groups != 0)
        err << "the " << c << " channels are not a multiple of groups=" << groups;
    else if (static_cast<int32_t>(dwShift.size()) != c || static_cast<int32_t>(pwWeight.size()) != c)
        err << "dw_scale, dw_shift and pw_weight need one value per channel (sizes " << c << ", " << dwShift.size()
            << ", " << pwWeight.size() << ")";
    else if (static_cast<int32_t>(pwBias.size()) != groups)
        err << "pw_bias needs one value per group (" << groups << "), got " << pwBias.size();
    else if ((reluDw != 0 && reluDw != 1) || (reluPw != 0 && reluPw != 1))
        err << "relu_dw / relu_pw must be 0 or 1";
    return err.str();
}

// ===================================================================== plugin
SubspaceAttentionPlugin::SubspaceAttentionPlugin(SubspaceAttentionParams params)
    : mParams(std::move(params))
{
}

SubspaceAttentionPlugin::SubspaceAttentionPlugin(SubspaceAttentionPlugin const& other)
    : IPluginV3()
    , IPluginV3OneCore()
    , IPluginV3OneBuild()
    , IPluginV3OneRuntime()
    , mParams(other.mParams)
{
    // device constants are per instance: a clone uploads its own (attachToContext / onShapeChange)
}

SubspaceAttentionPlugin::~SubspaceAttentionPlugin()
{
    ulsam_sa_constants_destroy(mConstants);
}

IPluginCapability* SubspaceAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* SubspaceAttentionPlugin::clone() noexcept
{
    try
    {
        return new SubspaceAttentionPlugin(*this);
    }
    catch (...)
    {
        logError("clone: out of memory");
        return nullptr;
    }
}

char const* SubspaceAttentionPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* SubspaceAttentionPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* SubspaceAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t SubspaceAttentionPlugin::getNbOutputs() const noexcept
{
    return 1;
}

bool SubspaceAttentionPlugin::checkDims(Dims const& d, char const* where) const noexcept
{
    if (d.nbDims != 4)
    {
        logError(std::string(where) + ": input must be 4-D NCHW, got " + std::to_string(d.nbDims) + " dims");
        return false;
    }
    if (d.d[1] >= 0 && d.d[1] != mParams.channels())
    {
        logError(std::string(where) + ": input has " + std::to_string(d.d[1]) + " channels, the constants "
            + std::to_string(mParams.channels()));
        return false;
    }
    return true;
}

int32_t SubspaceAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || in == nullptr || out == nullptr)
        return -1;
    return checkDims(in[0].desc.dims, "configurePlugin") ? 0 : -1;
}

bool SubspaceAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1)
        return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    bool const typeOk = d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    bool const fmtOk = d.format == TensorFormat::kLINEAR;
    if (pos == 0)
        return typeOk && fmtOk;
    return typeOk && fmtOk && d.type == inOut[0].desc.type;
}

int32_t SubspaceAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != 1)
        return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t SubspaceAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != 1 || nbOutputs != 1 || inputs[0].nbDims != 4)
        return -1;
    outputs[0] = inputs[0];
    return 0;
}

size_t SubspaceAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != 1 || inputs[0].max.nbDims != 4)
        return 0;
    Dims const& m = inputs[0].max; // the size is non-decreasing in N, H, W: max covers the profile
    return ulsam_sa_workspace_size(dtypeCode(inputs[0].desc.type), static_cast<int>(m.d[0]), mParams.channels(),
        static_cast<int>(m.d[2]), static_cast<int>(m.d[3]), mParams.groups);
}

int32_t SubspaceAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != 1 || nbOutputs != 1)
        return -1;
    if (!checkDims(in[0].dims, "onShapeChange"))
        return -1;
    if (uploadConstants("onShapeChange") != 0)
        return -1;
    int const dtype = dtypeCode(in[0].type);
    int const st = ulsam_sa_prepare(dtype); // no-op once this context holds the modules
    if (st != ULSAM_SA_OK)
    {
        logError(std::string("onShapeChange: loading the ") + (dtype == ULSAM_SA_FP16 ? "fp16" : "fp32")
            + " kernel failed: " + ulsam_sa_status_string(st) + ": " + ulsam_sa_last_error());
        return -1;
    }
    return 0;
}

int32_t SubspaceAttentionPlugin::uploadConstants(char const* where) noexcept
{
    if (mConstants)
        return 0;
    int const st = ulsam_sa_constants_create(mParams.channels(), mParams.groups, mParams.dwScale.data(),
        mParams.dwShift.data(), mParams.pwWeight.data(), mParams.pwBias.data(), &mConstants);
    if (st != ULSAM_SA_OK)
    {
        logError(std::string(where) + ": uploading the folded constants to the GPU failed: " + ulsam_sa_last_error());
        return -1;
    }
    return 0;
}

int32_t SubspaceAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        return -1;
    Dims const& d = inputDesc[0].dims;
    if (!checkDims(d, "enqueue"))
        return -1;
    int const dtype = dtypeCode(inputDesc[0].type);
    int const n = static_cast<int>(d.d[0]), c = static_cast<int>(d.d[1]), h = static_cast<int>(d.d[2]),
              w = static_cast<int>(d.d[3]);
    if (n == 0 || h == 0 || w == 0)
        return 0; // empty tensor: nothing to do
    if (mConstants == nullptr)
    {
        logError("enqueue: the folded constants are not on the GPU (their upload in attachToContext/onShapeChange "
                 "failed, see the earlier message); nothing was launched");
        return -1;
    }
    // TensorRT allocated getWorkspaceSize(profile max); this shape's size is <= that (monotone).
    size_t const wsBytes = ulsam_sa_workspace_size(dtype, n, c, h, w, mParams.groups);
    int const st = ulsam_sa_launch_with_constants(inputs[0], outputs[0], dtype, n, c, h, w, mConstants, mParams.reluDw,
        mParams.reluPw, workspace, wsBytes, reinterpret_cast<ulsam_sa_stream_t>(stream));
    if (st != ULSAM_SA_OK)
    {
        logError(std::string("enqueue: launch failed: ") + ulsam_sa_status_string(st) + ": " + ulsam_sa_last_error());
        return -1;
    }
    return 0;
}

IPluginV3* SubspaceAttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    auto* cloned = static_cast<SubspaceAttentionPlugin*>(clone());
    if (cloned != nullptr && cloned->uploadConstants("attachToContext") != 0)
        logMessage(ILogger::Severity::kWARNING, "attachToContext: constants not uploaded; onShapeChange retries");
    return cloned;
}

PluginFieldCollection const* SubspaceAttentionPlugin::getFieldsToSerialize() noexcept
{
    mSerializeFields.clear();
    mSerializeFields.emplace_back(kFieldGroups, &mParams.groups, PluginFieldType::kINT32, 1);
    mSerializeFields.emplace_back(kFieldReluDw, &mParams.reluDw, PluginFieldType::kINT32, 1);
    mSerializeFields.emplace_back(kFieldReluPw, &mParams.reluPw, PluginFieldType::kINT32, 1);
    mSerializeFields.emplace_back(kFieldDwScale, mParams.dwScale.data(), PluginFieldType::kFLOAT32,
        static_cast<int32_t>(mParams.dwScale.size()));
    mSerializeFields.emplace_back(kFieldDwShift, mParams.dwShift.data(), PluginFieldType::kFLOAT32,
        static_cast<int32_t>(mParams.dwShift.size()));
    mSerializeFields.emplace_back(kFieldPwWeight, mParams.pwWeight.data(), PluginFieldType::kFLOAT32,
        static_cast<int32_t>(mParams.pwWeight.size()));
    mSerializeFields.emplace_back(kFieldPwBias, mParams.pwBias.data(), PluginFieldType::kFLOAT32,
        static_cast<int32_t>(mParams.pwBias.size()));
    mSerializeFC.nbFields = static_cast<int32_t>(mSerializeFields.size());
    mSerializeFC.fields = mSerializeFields.data();
    return &mSerializeFC;
}

// ===================================================================== creator
SubspaceAttentionPluginCreator::SubspaceAttentionPluginCreator()
{
    mFields.emplace_back(kFieldGroups, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kFieldReluDw, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kFieldReluPw, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kFieldDwScale, nullptr, PluginFieldType::kFLOAT32, 0);
    mFields.emplace_back(kFieldDwShift, nullptr, PluginFieldType::kFLOAT32, 0);
    mFields.emplace_back(kFieldPwWeight, nullptr, PluginFieldType::kFLOAT32, 0);
    mFields.emplace_back(kFieldPwBias, nullptr, PluginFieldType::kFLOAT32, 0);
    mFC.nbFields = static_cast<int32_t>(mFields.size());
    mFC.fields = mFields.data();
}

char const* SubspaceAttentionPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* SubspaceAttentionPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* SubspaceAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* SubspaceAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFC;
}

std::string SubspaceAttentionPluginCreator::parseFields(PluginFieldCollection const* fc, SubspaceAttentionParams& p)
{
    if (fc == nullptr)
        return "no plugin fields given";
    bool seen[7] = {false, false, false, false, false, false, false};
    char const* names[7] = {kFieldGroups, kFieldReluDw, kFieldReluPw, kFieldDwScale, kFieldDwShift, kFieldPwWeight,
        kFieldPwBias};
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
            continue;
        bool ok = true;
        int which = -1;
        for (int j = 0; j < 7; ++j)
            if (std::strcmp(f.name, names[j]) == 0)
                which = j;
        switch (which)
        {
        case 0: ok = readInt(f, p.groups); break;
        case 1: ok = readInt(f, p.reluDw); break;
        case 2: ok = readInt(f, p.reluPw); break;
        case 3: ok = readFloats(f, p.dwScale); break;
        case 4: ok = readFloats(f, p.dwShift); break;
        case 5: ok = readFloats(f, p.pwWeight); break;
        case 6: ok = readFloats(f, p.pwBias); break;
        default: continue; // unknown fields are ignored (e.g. plugin_version passed by hand)
        }
        if (!ok)
            return std::string("field '") + f.name + "' has an unsupported type or no data";
        seen[which] = true;
    }
    for (int j = 0; j < 7; ++j)
        if (!seen[j] && j != 1 && j != 2) // relu flags default to 1 (the reference / BN form)
            return std::string("required field '") + names[j] + "' is missing";
    return p.validate();
}

IPluginV3* SubspaceAttentionPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        SubspaceAttentionParams params;
        std::string const err = parseFields(fc, params);
        if (!err.empty())
        {
            logError(std::string("cannot create layer '") + (name ? name : "?") + "': " + err);
            return nullptr;
        }
        return new SubspaceAttentionPlugin(std::move(params));
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin: ") + e.what());
    }
    catch (...)
    {
        logError("createPlugin: unknown error");
    }
    return nullptr;
}

} // namespace ulsam

// ===================================================================== library entry points
#if defined(_WIN32)
#define ULSAM_EXPORT __declspec(dllexport)
#else
#define ULSAM_EXPORT __attribute__((visibility("default")))
#endif

extern "C" ULSAM_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static ulsam::SubspaceAttentionPluginCreator sCreator;
    static IPluginCreatorInterface* const kCreators[] = {&sCreator};
    nbCreators = 1;
    return kCreators;
}

extern "C" ULSAM_EXPORT void setLoggerFinder(ILoggerFinder* finder)
{
    ulsam::gLoggerFinder.set(finder);
}

// TensorRT plugin "SubspaceAttention" (version "1", namespace "ulsam"): the fused ULSAM op.
//
// IPluginV3 (IPluginV3OneCore / OneBuild / OneRuntime) + IPluginCreatorV3One, TensorRT 10.x and
// 11.x. The library exports getCreators() / setLoggerFinder() so it loads with
// `trtexec --dynamicPlugins=libulsam_subspace_attention_plugin.so` and
// `trt.get_plugin_registry().load_library(path)`. Engines need the library at run time too:
// `--setPluginsToSerialize` (IBuilderConfig::setPluginsToSerialize) embeds it only in
// version-compatible engines (`--versionCompatible`), which build-trt does not make.
//
// Fields (= ONNX node attributes; the ONNX parser maps INT -> kINT32, FLOATS -> kFLOAT32):
//   groups (INT32), relu_dw (INT32 0/1), relu_pw (INT32 0/1),
//   dw_scale, dw_shift, pw_weight (FLOAT32 x C), pw_bias (FLOAT32 x groups)
// One input and one output: [N, C, H, W] fp32 or fp16 (same type in and out), linear (NCHW);
// dynamic N, H, W. fp16 tensors run the fp16 kernel, which loads/stores fp16 and does all
// arithmetic (logits, softmax max/sum, 1 + A) in fp32.
//
// Device work happens outside enqueue: attachToContext uploads the constants, onShapeChange
// (called before any enqueue, at build time for tactic timing and at run time) retries that upload
// if needed and loads the kernel modules of the tensor's dtype (ulsam_sa_prepare). enqueue only
// launches; missing constants or modules are an error with a logged sentence, never a fix-up.
#ifndef ULSAM_SUBSPACE_ATTENTION_PLUGIN_H
#define ULSAM_SUBSPACE_ATTENTION_PLUGIN_H

#include "NvInferRuntime.h"
#include "launcher.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ulsam
{

constexpr char const* kPluginName = "SubspaceAttention";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "ulsam";

struct SubspaceAttentionParams
{
    int32_t groups{1};
    int32_t reluDw{1};
    int32_t reluPw{1};
    std::vector<float> dwScale, dwShift, pwWeight, pwBias;

    int32_t channels() const
    {
        return static_cast<int32_t>(dwScale.size());
    }
    // Empty string when valid, else the reason.
    std::string validate() const;
};

class SubspaceAttentionPlugin final : public nvinfer1::IPluginV3,
                                      public nvinfer1::IPluginV3OneCore,
                                      public nvinfer1::IPluginV3OneBuild,
                                      public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit SubspaceAttentionPlugin(SubspaceAttentionParams params);
    SubspaceAttentionPlugin(SubspaceAttentionPlugin const& other);
    SubspaceAttentionPlugin& operator=(SubspaceAttentionPlugin const&) = delete;
    ~SubspaceAttentionPlugin() override;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    SubspaceAttentionParams const& params() const
    {
        return mParams;
    }

private:
    bool checkDims(nvinfer1::Dims const& d, char const* where) const noexcept;
    // Uploads the constants into the current CUDA context unless already there; logs why not.
    int32_t uploadConstants(char const* where) noexcept;

    SubspaceAttentionParams mParams;
    ulsam_sa_constants_t* mConstants{nullptr};
    std::vector<nvinfer1::PluginField> mSerializeFields;
    nvinfer1::PluginFieldCollection mSerializeFC{};
};

class SubspaceAttentionPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    SubspaceAttentionPluginCreator();
    ~SubspaceAttentionPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

    // Field parsing shared with tests: returns an empty string on success, else the reason.
    static std::string parseFields(nvinfer1::PluginFieldCollection const* fc, SubspaceAttentionParams& out);

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFC{};
};

} // namespace ulsam

#endif // ULSAM_SUBSPACE_ATTENTION_PLUGIN_H

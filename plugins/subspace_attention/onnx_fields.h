// The plugin nodes of a real ONNX file, read without protobuf or onnx, and turned into plugin fields the way
// TensorRT's ONNX parser (onnx-tensorrt's loadFields) does: in the creator's field order, only the fields the
// creator lists, attributes it does not list dropped, a listed attribute the node lacks skipped;
// INT -> one kINT32, INTS -> kINT32, FLOAT / FLOATS -> kFLOAT32, STRING -> kCHAR (its bytes, no terminator).
//
// Test code for the GPU harness: it reads the few ModelProto fields a plugin node needs (graph.node with
// op_type, name, inputs and attributes; graph.input / value_info / output for the input's shape) from the
// protobuf wire format. Packed and unpacked repeated scalars are both accepted, as protobuf writers emit either.
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace onnx_fields
{

// AttributeProto.AttributeType
enum AttrType : int
{
    kUndefined = 0,
    kFloat = 1,
    kInt = 2,
    kString = 3,
    kFloats = 6,
    kInts = 7,
};

struct Attribute
{
    std::string name;
    int type = kUndefined;
    float f = 0.0f;
    int64_t i = 0;
    std::string s;
    std::vector<float> floats;
    std::vector<int64_t> ints;
};

struct Node
{
    std::string name, opType, domain;
    std::vector<std::string> inputs, outputs;
    std::vector<Attribute> attributes;

    Attribute const* find(std::string const& key) const
    {
        for (auto const& a : attributes)
            if (a.name == key)
                return &a;
        return nullptr;
    }
    std::string stringAttr(std::string const& key, std::string const& fallback) const
    {
        Attribute const* a = find(key);
        return a && a->type == kString ? a->s : fallback;
    }
};

// A tensor's shape: dim_value, or -1 for a named (dim_param) or missing dimension.
using Shape = std::vector<int64_t>;

struct Model
{
    std::vector<Node> nodes;
    std::map<std::string, Shape> shapes; // graph inputs, value_info and outputs with a known rank
};

class Reader
{
public:
    Reader(uint8_t const* p, size_t n)
        : mP(p)
        , mEnd(p + n)
    {
    }
    bool more() const
    {
        return mP < mEnd;
    }
    uint64_t varint()
    {
        uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            need(1);
            uint8_t const b = *mP++;
            v |= static_cast<uint64_t>(b & 0x7f) << shift;
            if (!(b & 0x80))
                return v;
        }
        throw std::runtime_error("malformed varint");
    }
    // (field number, wire type)
    std::pair<uint32_t, int> tag()
    {
        uint64_t const t = varint();
        return {static_cast<uint32_t>(t >> 3), static_cast<int>(t & 7)};
    }
    Reader sub()
    {
        uint64_t const n = varint();
        need(n);
        Reader r(mP, static_cast<size_t>(n));
        mP += n;
        return r;
    }
    std::string bytes()
    {
        Reader r = sub();
        return std::string(reinterpret_cast<char const*>(r.mP), static_cast<size_t>(r.mEnd - r.mP));
    }
    float fixed32f()
    {
        need(4);
        float v;
        std::memcpy(&v, mP, 4);
        mP += 4;
        return v;
    }
    void skip(int wire)
    {
        switch (wire)
        {
        case 0: varint(); break;
        case 1: need(8); mP += 8; break;
        case 2: sub(); break;
        case 5: need(4); mP += 4; break;
        default: throw std::runtime_error("unsupported protobuf wire type " + std::to_string(wire));
        }
    }

private:
    void need(uint64_t n) const
    {
        if (n > static_cast<uint64_t>(mEnd - mP))
            throw std::runtime_error("truncated protobuf message");
    }
    uint8_t const* mP;
    uint8_t const* mEnd;
};

inline Attribute readAttribute(Reader r)
{
    Attribute a;
    while (r.more())
    {
        auto [field, wire] = r.tag();
        if (field == 1 && wire == 2)
            a.name = r.bytes();
        else if (field == 2 && wire == 5)
            a.f = r.fixed32f();
        else if (field == 3 && wire == 0)
            a.i = static_cast<int64_t>(r.varint());
        else if (field == 4 && wire == 2)
            a.s = r.bytes();
        else if (field == 7 && wire == 5)
            a.floats.push_back(r.fixed32f());
        else if (field == 7 && wire == 2)
        {
            Reader p = r.sub();
            while (p.more())
                a.floats.push_back(p.fixed32f());
        }
        else if (field == 8 && wire == 0)
            a.ints.push_back(static_cast<int64_t>(r.varint()));
        else if (field == 8 && wire == 2)
        {
            Reader p = r.sub();
            while (p.more())
                a.ints.push_back(static_cast<int64_t>(p.varint()));
        }
        else if (field == 20 && wire == 0)
            a.type = static_cast<int>(r.varint());
        else
            r.skip(wire);
    }
    return a;
}

inline Node readNode(Reader r)
{
    Node n;
    while (r.more())
    {
        auto [field, wire] = r.tag();
        if (field == 1 && wire == 2)
            n.inputs.push_back(r.bytes());
        else if (field == 2 && wire == 2)
            n.outputs.push_back(r.bytes());
        else if (field == 3 && wire == 2)
            n.name = r.bytes();
        else if (field == 4 && wire == 2)
            n.opType = r.bytes();
        else if (field == 5 && wire == 2)
            n.attributes.push_back(readAttribute(r.sub()));
        else if (field == 7 && wire == 2)
            n.domain = r.bytes();
        else
            r.skip(wire);
    }
    return n;
}

// Calls fn(Reader) for every length-delimited field `number` of the message `r` holds; skips every other field.
template <class Fn>
inline void eachMessage(Reader r, uint32_t number, Fn&& fn)
{
    while (r.more())
    {
        auto [field, wire] = r.tag();
        if (field == number && wire == 2)
            fn(r.sub());
        else
            r.skip(wire);
    }
}

// ValueInfoProto -> (name, shape); type(2).tensor_type(1).shape(2).dim(1).dim_value(1)
inline std::pair<std::string, Shape> readValueInfo(Reader r)
{
    std::string name;
    Shape shape;
    bool ranked = false;
    while (r.more())
    {
        auto [field, wire] = r.tag();
        if (field == 1 && wire == 2)
            name = r.bytes();
        else if (field == 2 && wire == 2)
            eachMessage(r.sub(), 1, [&](Reader tensor) {
                eachMessage(tensor, 2, [&](Reader dims) {
                    ranked = true;
                    eachMessage(dims, 1, [&](Reader dim) {
                        int64_t value = -1;
                        while (dim.more())
                        {
                            auto [vf, vw] = dim.tag();
                            if (vf == 1 && vw == 0)
                                value = static_cast<int64_t>(dim.varint());
                            else
                                dim.skip(vw);
                        }
                        shape.push_back(value);
                    });
                });
            });
        else
            r.skip(wire);
    }
    return {name, ranked ? shape : Shape{}};
}

inline Model readModel(std::string const& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot open " + path);
    std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Model m;
    bool sawGraph = false;
    eachMessage(Reader(data.data(), data.size()), 7, [&](Reader graph) { // ModelProto.graph
        sawGraph = true;
        while (graph.more())
        {
            auto [gf, gw] = graph.tag();
            if (gf == 1 && gw == 2)
                m.nodes.push_back(readNode(graph.sub()));
            else if ((gf == 11 || gf == 12 || gf == 13) && gw == 2) // input, output, value_info
            {
                auto [name, shape] = readValueInfo(graph.sub());
                if (!shape.empty())
                    m.shapes[name] = shape;
            }
            else
                graph.skip(gw);
        }
    });
    if (!sawGraph)
        throw std::runtime_error(path + " holds no ONNX graph");
    return m;
}

// The fields onnx-tensorrt would pass to createPlugin for `node`, given the creator's field names. The
// returned object owns the data the PluginFields point at.
struct Fields
{
    std::vector<std::vector<uint8_t>> storage;
    std::vector<std::string> names;
    std::vector<nvinfer1::PluginField> list;
    nvinfer1::PluginFieldCollection collection{};
    std::vector<std::string> missing; // listed by the creator, absent from the node (onnx-tensorrt warns)
};

template <class T>
inline std::vector<uint8_t> asBytes(std::vector<T> const& v)
{
    std::vector<uint8_t> out(v.size() * sizeof(T));
    if (!v.empty())
        std::memcpy(out.data(), v.data(), out.size());
    return out;
}

inline void loadFields(Node const& node, nvinfer1::PluginFieldCollection const& creatorFields, Fields& out)
{
    using nvinfer1::PluginFieldType;
    out.storage.clear();
    out.names.clear();
    out.list.clear();
    out.missing.clear();
    std::vector<PluginFieldType> types;
    std::vector<int32_t> lengths;
    for (int32_t i = 0; i < creatorFields.nbFields; ++i)
    {
        std::string const name = creatorFields.fields[i].name;
        Attribute const* a = node.find(name);
        if (!a)
        {
            out.missing.push_back(name);
            continue;
        }
        switch (a->type)
        {
        case kFloat:
            out.storage.push_back(asBytes(std::vector<float>{a->f}));
            types.push_back(PluginFieldType::kFLOAT32);
            lengths.push_back(1);
            break;
        case kInt:
            out.storage.push_back(asBytes(std::vector<int32_t>{static_cast<int32_t>(a->i)}));
            types.push_back(PluginFieldType::kINT32);
            lengths.push_back(1);
            break;
        case kString:
            out.storage.emplace_back(a->s.begin(), a->s.end());
            types.push_back(PluginFieldType::kCHAR);
            lengths.push_back(static_cast<int32_t>(a->s.size()));
            break;
        case kFloats:
            out.storage.push_back(asBytes(a->floats));
            types.push_back(PluginFieldType::kFLOAT32);
            lengths.push_back(static_cast<int32_t>(a->floats.size()));
            break;
        case kInts:
        {
            std::vector<int32_t> v(a->ints.begin(), a->ints.end());
            out.storage.push_back(asBytes(v));
            types.push_back(PluginFieldType::kINT32);
            lengths.push_back(static_cast<int32_t>(v.size()));
            break;
        }
        default: throw std::runtime_error("attribute " + name + " has a type TensorRT cannot pass as a plugin field");
        }
        out.names.push_back(name);
    }
    // names and storage no longer move: point the fields at them
    for (size_t i = 0; i < out.names.size(); ++i)
        out.list.emplace_back(out.names[i].c_str(), out.storage[i].empty() ? nullptr : out.storage[i].data(),
            types[i], lengths[i]);
    out.collection.nbFields = static_cast<int32_t>(out.list.size());
    out.collection.fields = out.list.data();
}

} // namespace onnx_fields

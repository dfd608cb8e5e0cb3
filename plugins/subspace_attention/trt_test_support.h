// What the plugin's self-tests share: check() and its failure count, a logger that keeps messages, the finder
// handed to setLoggerFinder, dims4, loading the plugin library.
#pragma once

#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstdio>
#include <string>
#include <vector>

namespace ulsam_test
{

using namespace nvinfer1;

inline int gFailures = 0;

// One line per check ("PASS what" / "FAIL what"), flushed so a crash after it still shows it; failures counted.
inline void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    std::fflush(stdout);
    if (!ok)
        ++gFailures;
}

class CaptureLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
            messages.emplace_back(msg);
    }
    std::vector<std::string> messages;
    bool saw(char const* needle) const
    {
        for (auto const& m : messages)
            if (m.find(needle) != std::string::npos)
                return true;
        return false;
    }
    // Like saw(), but only among messages logged after index `from`.
    bool sawSince(size_t from, char const* needle) const
    {
        for (size_t i = from; i < messages.size(); ++i)
            if (messages[i].find(needle) != std::string::npos)
                return true;
        return false;
    }
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* l)
        : mLogger(l)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

inline Dims dims4(int64_t n, int64_t c, int64_t h, int64_t w)
{
    Dims d{};
    d.nbDims = 4;
    d.d[0] = n;
    d.d[1] = c;
    d.d[2] = h;
    d.d[3] = w;
    return d;
}

// A plugin library opened the way IPluginRegistry::loadLibrary / trtexec --dynamicPlugins open it: dlopen, the two
// exported entry points, the logger finder handed over, getCreators. Each step is a check line; `creators` is
// empty when one failed.
struct LoadedPlugin
{
    void* handle = nullptr;
    std::vector<IPluginCreatorInterface*> creators;
};

inline LoadedPlugin loadPlugin(char const* path, ILoggerFinder& finder)
{
    LoadedPlugin loaded;
    loaded.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    check(loaded.handle != nullptr, std::string("dlopen ") + path + (loaded.handle ? "" : std::string(": ") + dlerror()));
    if (!loaded.handle)
        return loaded;
    auto getCreators
        = reinterpret_cast<IPluginCreatorInterface* const* (*) (int32_t&)>(dlsym(loaded.handle, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(loaded.handle, "setLoggerFinder"));
    check(getCreators && setLoggerFinder, "exports getCreators + setLoggerFinder");
    if (!getCreators || !setLoggerFinder)
        return loaded;
    setLoggerFinder(&finder);
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    for (int32_t i = 0; creators && i < count; ++i)
        loaded.creators.push_back(creators[i]);
    return loaded;
}

} // namespace ulsam_test

using ulsam_test::CaptureLogger;
using ulsam_test::check;
using ulsam_test::dims4;
using ulsam_test::gFailures;
using ulsam_test::Finder;
using ulsam_test::loadPlugin;

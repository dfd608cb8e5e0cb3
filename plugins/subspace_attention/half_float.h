// fp16 <-> fp32 on the host, round to nearest even (the self-tests' inputs and references; header-only).
#pragma once

#include <cstdint>
#include <cstring>

inline uint16_t toHalf(float f)
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

inline float fromHalf(uint16_t h)
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

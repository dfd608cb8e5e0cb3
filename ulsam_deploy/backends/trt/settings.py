"""The thin seam between ``build-trt`` options and TensorRT's builder: plan (pure), then apply.

:func:`plan_build` turns :class:`BuildOptions` + what the ONNX says (:class:`OnnxInfo`) + the
TensorRT version into a :class:`BuildPlan` (plain data: flag names, pool sizes, profile shapes),
refusing impossible combinations with one sentence each. :func:`apply_plan` then makes exactly
these calls on TensorRT objects. The tests make these calls on fakes built from TensorRT's real
classes (10.3.0, 10.16.1, 11.4.0 Python bindings: names, keywords, argument types and enum members
are TensorRT's); that checks our mapping, never that an engine builds.

TensorRT Python API used here (same names in 10.3 and 11.x):

- ``Builder.create_network(flags)``; ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists in
  both (10.x: opt-in; 11.x: "deprecated: always enabled"); ``EXPLICIT_BATCH`` is deprecated and
  ignored since 10.0 and gone in 11, so we never set it. ``PREFER_AOT_PYTHON_PLUGINS`` since 10.9.
- ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``,
  ``builder_optimization_level`` (0-5, default 3), ``set_flag(BuilderFlag.X)``,
  ``default_device_type = DeviceType.DLA``, ``DLA_core``, ``add_optimization_profile``,
  ``create_timing_cache(bytes)`` / ``set_timing_cache(cache, ignore_mismatch)`` /
  ``get_timing_cache()``, ``progress_monitor`` (10.0+): same names in 10.3 and 11.1.
- ``BuilderFlag.FP16`` / ``INT8`` exist in 10.x only (removed in 11.0 with weak typing);
  ``GPU_FALLBACK`` and ``TF32`` exist in both. ``TF32`` is on by default, so fp32 layers would run
  TF32 math on Ampere and Orin: the plan clears it (``clear_flag``) unless ``--tf32``.
- ``Builder.create_optimization_profile()`` + ``IOptimizationProfile.set_shape(name, min, opt, max)``;
  ``Builder.num_DLA_cores``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import onnx

from ulsam_deploy.declared import Flag, check_flags
from ulsam_deploy.op_spec import PLUGIN_ROUTES
from ulsam_deploy.errors import UserError
from ulsam_deploy.backends.trt.runtime import parse_version

ONNX_OPSET_MAX_TRT10 = 20  # onnx-tensorrt 10.x documents ONNX opsets 9 to 20
OPT_LEVELS = range(0, 6)
MAX_TIMING_CACHE_BYTES = 1 << 30  # TensorRT's caches are megabytes


# ----------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str | int | None) -> "BatchProfile | None":
        """'1:8:32' -> (1, 8, 32); '8' -> (8, 8, 8); None -> None."""
        if text is None or text == "":
            return None
        parts = str(text).split(":")
        if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
            raise UserError(f"--batch-profile takes MIN:OPT:MAX (e.g. 1:8:32) or one size (e.g. 8), not '{text}'.")
        values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
        lo, opt, hi = values
        if lo < 1 or not lo <= opt <= hi:
            raise UserError(f"--batch-profile {text} must satisfy 1 <= MIN <= OPT <= MAX.")
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


def _hw(text: str, flag: str, example: str) -> tuple[int, int]:
    parts = text.strip().lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"{flag} takes MIN:OPT:MAX sizes, each S or HxW (e.g. {example}), not '{text}'.")
    h, w = (int(parts[0]),) * 2 if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    return h, w


@dataclass(frozen=True)
class SizeProfile:
    """Height and width of an optimization profile: (h, w) at min, opt and max."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    @classmethod
    def parse(cls, text: str | None) -> "SizeProfile | None":
        """'256:320:640' -> square sizes; '256x320:320x480:640x960' -> (H, W) each; '320' or '320x480' -> static."""
        if text is None or str(text).strip() == "":
            return None
        parts = str(text).split(":")
        if len(parts) not in (1, 3):
            raise UserError(f"--size-profile takes MIN:OPT:MAX (e.g. 256:320:640, or 256x320:320x480:640x960) or one "
                            f"size, not '{text}'.")
        sizes = [_hw(p, "--size-profile", "256:320:640") for p in parts] * (3 if len(parts) == 1 else 1)
        lo, opt, hi = sizes
        for axis, what in ((0, "height"), (1, "width")):
            if lo[axis] < 1 or not lo[axis] <= opt[axis] <= hi[axis]:
                raise UserError(f"--size-profile {text}: the {what}s {lo[axis]}, {opt[axis]}, {hi[axis]} must satisfy "
                                "1 <= MIN <= OPT <= MAX.")
        return cls(lo, opt, hi)

    @classmethod
    def from_ranges(cls, height, width) -> "SizeProfile":
        return cls((height[0], width[0]), (height[1], width[1]), (height[2], width[2]))

    def __str__(self) -> str:
        return ":".join(f"{h}x{w}" if h != w else str(h) for h, w in (self.min, self.opt, self.max))


@dataclass
class BuildOptions:
    batch: BatchProfile | None = None  # profile for a dynamic batch axis [default: the ONNX sidecar's batch range]
    sizes: SizeProfile | None = None  # profile for a dynamic H and W [default: the sidecar's height/width ranges]
    # MemoryPoolType.WORKSPACE limit in MiB; None: TensorRT's default (device memory)
    workspace_mib: Annotated[int | None, Flag("--workspace", ge=1, le=1 << 24)] = None
    # builder_optimization_level; None: TensorRT's default (3)
    opt_level: Annotated[int | None, Flag("--opt-level", ge=min(OPT_LEVELS), le=max(OPT_LEVELS))] = None
    timing_cache: Path | None = None  # loaded when present, saved after the build
    dla_core: Annotated[int | None, Flag("--dla-core", ge=0, le=15)] = None
    gpu_fallback: bool = False
    plugin: Annotated[str | None, Flag("--plugin", choices=PLUGIN_ROUTES)] = None
    plugin_lib: Path | None = None
    weakly_typed: bool = False  # TensorRT 10 only: let the builder choose precisions (with fp16/int8 flags)
    fp16: bool = False
    int8: bool = False
    tf32: bool = False  # let fp32 layers use TF32 math (BuilderFlag.TF32, TensorRT's default); cleared otherwise
    force: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.batch, (str, int)):
            self.batch = BatchProfile.parse(self.batch)
        if isinstance(self.sizes, (str, int)):
            self.sizes = SizeProfile.parse(str(self.sizes))
        if self.plugin_lib is not None and self.plugin is None:
            self.plugin = "lib"
        check_flags(self)
        if self.gpu_fallback and self.dla_core is None:
            raise UserError("--gpu-fallback only applies with --dla-core N (layers DLA cannot run go to the GPU).")
        if self.dla_core is not None and (self.plugin is not None or self.plugin_lib is not None) \
                and not self.gpu_fallback:
            raise UserError("The SubspaceAttention plugin runs on the GPU only, so --dla-core with --plugin fails "
                            "without GPU fallback; add --gpu-fallback, or drop --dla-core.")
        if (self.fp16 or self.int8) and not self.weakly_typed:
            flag = "--fp16" if self.fp16 else "--int8"
            raise UserError(f"{flag} is a builder flag of TensorRT 10's weakly typed mode; add --weakly-typed, or put "
                            f"the precision into the ONNX with 'ulsam-deploy convert --precision "
                            f"{'fp16' if self.fp16 else 'int8'}' (the strongly typed way, the only one in TensorRT 11).")
        if self.plugin == "python" and self.plugin_lib is not None:
            raise UserError("--plugin-lib gives the C++ plugin library; it does not go with --plugin python.")
        if self.timing_cache is not None:
            from ulsam_deploy.artifacts import check_output

            self.timing_cache = Path(self.timing_cache)
            if self.timing_cache.is_dir() and not self.timing_cache.is_symlink():
                raise UserError(f"--timing-cache '{self.timing_cache}' is a directory; give a file path.")
            # read when present and rewritten after the build: a regular file (or none yet), never a link or device
            check_output(self.timing_cache, force=True, what="timing cache (--timing-cache)")
            if self.timing_cache.is_file() and self.timing_cache.stat().st_size > MAX_TIMING_CACHE_BYTES:
                raise UserError(f"--timing-cache '{self.timing_cache}' is larger than "
                                f"{MAX_TIMING_CACHE_BYTES >> 20} MiB, so it is not a TensorRT timing cache; give "
                                "another path.")
        if self.plugin_lib is not None:
            self.plugin_lib = Path(self.plugin_lib)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["batch"] = str(self.batch) if self.batch else None
        data["sizes"] = str(self.sizes) if self.sizes else None
        for key in ("timing_cache", "plugin_lib"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data


# -------------------------------------------------------------------------------- ONNX facts


@dataclass
class OnnxInput:
    name: str
    dims: list  # ints, or strings for symbolic dims
    dtype: str

    @property
    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.dims) if not isinstance(d, int) or d <= 0]


@dataclass
class OnnxInfo:
    path: Path
    inputs: list[OnnxInput]
    precision: str  # fp32 / fp16 / int8
    fused_nodes: int  # SubspaceAttention nodes
    opset: int | None
    has_qdq: bool = False
    extra: dict = field(default_factory=dict)
    # the ONNX sidecar's ranges (sidecars.DynamicRange as a dict: batch, height, width, multiple_of), if any
    dynamic: dict | None = None


_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT8: "int8",
           onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64"}


def describe_onnx(model: onnx.ModelProto, path: Path, dynamic: dict | None = None) -> OnnxInfo:
    from ulsam_deploy.onnx_graph import fused_nodes, opset_of, precision_of

    inits = {t.name for t in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        inputs.append(OnnxInput(vi.name, dims, _DTYPES.get(tt.elem_type, str(tt.elem_type))))
    ops = {n.op_type for n in model.graph.node}
    return OnnxInfo(path, inputs, precision_of(model), len(fused_nodes(model)), opset_of(model),
                    bool({"QuantizeLinear", "DequantizeLinear"} & ops), dynamic=dynamic)


# ---------------------------------------------------------------------------------- the plan


@dataclass
class BuildPlan:
    trt_major: int
    strongly_typed: bool
    network_flags: list[str]
    builder_flags: list[str]
    memory_pools: dict[str, int]
    opt_level: int | None
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None
    static_shapes: dict[str, tuple[int, ...]]
    default_device: str  # "GPU" or "DLA"
    dla_core: int | None
    timing_cache: Path | None
    precision: str  # what the engine computes in, in words
    warnings: list[str] = field(default_factory=list)
    clear_flags: list[str] = field(default_factory=list)  # BuilderFlags on by default that the plan turns off
    tf32: bool = False
    profile_source: dict[str, str] = field(default_factory=dict)  # {"batch"|"sizes": "--batch-profile"|"sidecar"}
    batch: BatchProfile | None = None  # the profile's batch and sizes, whichever source gave them
    sizes: SizeProfile | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        if self.profile:
            data["profile"] = {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in self.profile.items()}
        data["batch"] = str(self.batch) if self.batch else None
        data["sizes"] = str(self.sizes) if self.sizes else None
        return data


def plan_build(options: BuildOptions, info: OnnxInfo, trt_version: str | None, num_dla_cores: int | None = None,
               python_plugin: bool = False) -> BuildPlan:
    """Everything the builder will be told, decided without TensorRT; impossible requests raise UserError.

    ``trt_version=None`` checks only what does not depend on the TensorRT version (used before
    TensorRT is imported, so option mistakes are reported even where TensorRT is missing).
    """
    version = parse_version(trt_version) if trt_version else ()
    major = version[0] if version else None
    if major is not None and major < 10:
        raise UserError(f"TensorRT {trt_version} is installed; build-trt needs TensorRT 10 or 11 (JetPack 6.1 and "
                        "6.2 ship 10.3; on x86 'pip install -U tensorrt').")
    warnings: list[str] = []
    if major == 10 and info.opset is not None and info.opset > ONNX_OPSET_MAX_TRT10:
        raise UserError(f"'{info.path.name}' uses ONNX opset {info.opset} and TensorRT {trt_version}'s ONNX parser "
                        f"supports opsets 9 to {ONNX_OPSET_MAX_TRT10}; re-export it with 'ulsam-deploy export --opset "
                        f"{ONNX_OPSET_MAX_TRT10}' (or build with TensorRT 11).")
    if options.weakly_typed and major is not None and major >= 11:
        raise UserError(f"TensorRT {trt_version} builds strongly typed networks only (weak typing and the "
                        "--fp16/--int8 builder flags were removed in 11.0); drop --weakly-typed and convert the ONNX "
                        "with 'ulsam-deploy convert --precision fp16|int8'.")
    if options.int8 and not info.has_qdq:
        raise UserError("--int8 without Q/DQ nodes would need a calibrator (deprecated since TensorRT 10.1, removed in "
                        "11); quantize the ONNX with 'ulsam-deploy convert --precision int8 --calib-data DIR' instead.")
    if info.fused_nodes and options.plugin is None:
        raise UserError(f"'{info.path.name}' has {info.fused_nodes} fused SubspaceAttention node(s); pass --plugin "
                        "lib (after 'ulsam-deploy build-plugin') or --plugin python so TensorRT can find the op, or "
                        "build from the unfused ONNX.")
    if not info.inputs:
        raise UserError(f"'{info.path.name}' has no graph input; re-export it with 'ulsam-deploy export'.")

    network_flags = [] if options.weakly_typed else ["STRONGLY_TYPED"]
    if python_plugin and version and version >= (10, 9):
        network_flags.append("PREFER_AOT_PYTHON_PLUGINS")  # ahead-of-time QDP kernels: engine runs without Python
    builder_flags = []
    int8 = options.int8
    if options.weakly_typed:
        if options.fp16:
            builder_flags.append("FP16")
        # TensorRT 10 needs BuilderFlag.INT8 to build a weakly typed network that has Q/DQ nodes
        int8 = int8 or info.has_qdq
        if int8:
            builder_flags.append("INT8")
    precision = (f"weakly typed, TensorRT chooses among fp32{'/fp16' if options.fp16 else ''}"
                 f"{'/int8' if int8 else ''}") if options.weakly_typed else f"{info.precision} (from the ONNX)"
    if options.tf32:
        precision += ", TF32 allowed for fp32 layers"
    clear_flags = [] if options.tf32 else ["TF32"]  # TF32 is on by default: "fp32" would not be fp32

    profile, static, source, batch, sizes = _plan_shapes(options, info, warnings)

    device, dla_core = "GPU", None
    if options.dla_core is not None:
        if num_dla_cores is not None and num_dla_cores == 0:
            raise UserError("This device has no DLA cores (TensorRT reports 0); DLA exists on Jetson AGX/NX Orin "
                            "(TensorRT 10.x on JetPack 6); drop --dla-core.")
        if num_dla_cores is not None and options.dla_core >= num_dla_cores:
            raise UserError(f"--dla-core {options.dla_core} does not exist; this device has {num_dla_cores} DLA "
                            f"core(s): use 0..{num_dla_cores - 1}.")
        if info.precision == "fp32" and not (options.weakly_typed and (options.fp16 or options.int8)):
            message = ("DLA runs fp16 and int8 layers only and this ONNX is fp32; convert it with 'ulsam-deploy "
                       "convert --precision fp16' (or int8), or on TensorRT 10 add --weakly-typed --fp16")
            if not options.gpu_fallback:
                raise UserError(message + ".")
            warnings.append(message + "; as is, every layer falls back to the GPU.")
        if profile and any(v[0] != v[2] for v in profile.values()):
            warnings.append("DLA needs static shapes; with a batch range its layers fall back to the GPU "
                            "(or fail without --gpu-fallback): prefer --batch-profile N.")
        if options.plugin:
            warnings.append("The SubspaceAttention plugin layers run on the GPU (--gpu-fallback).")
        device, dla_core = "DLA", int(options.dla_core)
        if options.gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
        if major is not None and major >= 11:
            warnings.append(f"TensorRT {trt_version}: DLA is supported from 11.4.1 on Jetson AGX Orin with JetPack "
                            "7.2.2+ only (not in 11.0-11.3); JetPack 6 boards use TensorRT 10.")

    pools = {"WORKSPACE": int(options.workspace_mib) << 20} if options.workspace_mib else {}
    return BuildPlan(major or 0, not options.weakly_typed, network_flags, builder_flags, pools, options.opt_level,
                     profile or None, static, device, dla_core, options.timing_cache, precision, warnings,
                     clear_flags=clear_flags, tf32=bool(options.tf32), profile_source=source, batch=batch,
                     sizes=sizes)


def _plan_shapes(options: BuildOptions, info: OnnxInfo, warnings: list[str]):
    """(profile, static shapes, where each profile axis came from, batch, sizes): a dynamic batch takes
    --batch-profile, else the sidecar's batch range; a dynamic H/W takes --size-profile, else the sidecar's height
    and width ranges; any other dynamic axis, or a range nobody gives, is refused in one sentence."""
    dynamic = info.dynamic or {}
    profile, static, source = {}, {}, {}
    batch_used, sizes_used = None, None
    for inp in info.inputs:
        dyn = inp.dynamic_axes
        allowed = (0, 2, 3) if len(inp.dims) == 4 else (0,)
        if any(axis not in allowed for axis in dyn):
            raise UserError(f"Input '{inp.name}' has dynamic axes {dyn} (shape {inp.dims}); build-trt takes a dynamic "
                            "batch, height and width of an N x C x H x W input only, so re-export it with fixed "
                            "other axes.")
        spatial = [axis for axis in dyn if axis in (2, 3)]
        if options.sizes is not None and not spatial and len(inp.dims) == 4:
            raise UserError(f"Input '{inp.name}' has a fixed size {inp.dims[2]}x{inp.dims[3]}, so --size-profile "
                            f"{options.sizes} cannot apply; drop it, or export with --input-size MIN:OPT:MAX for a "
                            "dynamic height and width.")
        lo, opt, hi = list(inp.dims), list(inp.dims), list(inp.dims)
        if 0 in dyn:
            b = options.batch
            if b is None and dynamic.get("batch"):
                b = BatchProfile(*(int(v) for v in dynamic["batch"]))
                source["batch"] = "sidecar"
            elif b is not None:
                source["batch"] = "--batch-profile"
            if b is None:
                raise UserError(f"Input '{inp.name}' has a dynamic batch axis and TensorRT needs an optimization "
                                "profile for it; pass --batch-profile MIN:OPT:MAX (e.g. --batch-profile 1:8:32) or "
                                "--batch-profile N (no sidecar records a batch range).")
            lo[0], opt[0], hi[0] = b.min, b.opt, b.max
            batch_used = b
        else:
            fixed = int(inp.dims[0]) if inp.dims else 1
            if options.batch is not None and not (options.batch.static and options.batch.min == fixed):
                raise UserError(f"Input '{inp.name}' has a static batch of {fixed}, so --batch-profile {options.batch} "
                                "cannot apply; drop --batch-profile, or re-export without --static-batch for a dynamic "
                                "batch axis.")
        if spatial:
            sizes = options.sizes
            if sizes is None:
                ranges = [dynamic.get(what) for what in ("height", "width")]
                if any(r is None for axis, r in zip((2, 3), ranges) if axis in spatial):
                    raise UserError(f"Input '{inp.name}' has a dynamic height and width and no sidecar records their "
                                    "range; pass --size-profile MIN:OPT:MAX (e.g. --size-profile 256:320:640).")
                height = ranges[0] or (inp.dims[2],) * 3
                width = ranges[1] or (inp.dims[3],) * 3
                sizes = SizeProfile.from_ranges([int(v) for v in height], [int(v) for v in width])
                source["sizes"] = "sidecar"
            else:
                source["sizes"] = "--size-profile"
                _check_sizes(sizes, dynamic, warnings)
            for axis, k in ((2, 0), (3, 1)):
                if axis in spatial:
                    lo[axis], opt[axis], hi[axis] = sizes.min[k], sizes.opt[k], sizes.max[k]
                elif not sizes.min[k] == sizes.opt[k] == sizes.max[k] == inp.dims[axis]:
                    raise UserError(f"--size-profile {sizes} changes the fixed {'height' if k == 0 else 'width'} "
                                    f"{inp.dims[axis]} of input '{inp.name}'; keep it at {inp.dims[axis]}.")
            sizes_used = sizes
        if dyn:
            profile[inp.name] = (tuple(int(v) for v in lo), tuple(int(v) for v in opt), tuple(int(v) for v in hi))
        else:
            static[inp.name] = tuple(int(d) for d in inp.dims)
    return profile, static, source, batch_used, sizes_used


def _check_sizes(sizes: SizeProfile, dynamic: dict, warnings: list[str]) -> None:
    """Refuse sizes that are not multiples of the network's stride (the sidecar says); warn outside its proven range."""
    multiple = dynamic.get("multiple_of")
    for h, w in (sizes.min, sizes.opt, sizes.max):
        for value in (h, w):
            if multiple and value % int(multiple):
                below = value // multiple * multiple
                near = f"{below} or {below + multiple}" if below else str(multiple)
                raise UserError(f"--size-profile {sizes}: {value} is not a multiple of {multiple}, the stride the "
                                f"exported network needs; use {near}.")
    height, width = dynamic.get("height"), dynamic.get("width")
    if height and width and (min(sizes.min[0], sizes.min[1]) < min(height[0], width[0])
                             or max(sizes.max[0], sizes.max[1]) > max(height[2], width[2])):
        warnings.append(f"--size-profile {sizes} reaches outside {height[0]}..{height[2]} x {width[0]}..{width[2]}, "
                        "the range export proved parity at; bench the engine at the new sizes before trusting it.")


# ---------------------------------------------------------------------------------- applying


def network_creation_flags(trt, plan: BuildPlan) -> int:
    """Bit mask for ``Builder.create_network``; flags this TensorRT lacks are skipped (STRONGLY_TYPED is implied
    on 11.x, where it is deprecated)."""
    value = 0
    for name in plan.network_flags:
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if flag is None:
            if name == "STRONGLY_TYPED" and plan.trt_major >= 11:
                continue
            raise UserError(f"This TensorRT has no NetworkDefinitionCreationFlag.{name}; upgrade TensorRT.")
        value |= 1 << int(flag)
    return value


def apply_plan(trt, builder, config, plan: BuildPlan, timing_cache_bytes: bytes | None = None) -> dict:
    """Make the builder-config calls the plan describes; returns what was set (for the sidecar)."""
    applied: dict = {}
    for pool, size in plan.memory_pools.items():
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, pool), int(size))
        applied.setdefault("memory_pools", {})[pool] = int(size)
    if plan.opt_level is not None:
        config.builder_optimization_level = int(plan.opt_level)
        applied["builder_optimization_level"] = int(plan.opt_level)
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise UserError(f"This TensorRT has no BuilderFlag.{name} (TensorRT 11 removed FP16/INT8); see --help.")
        config.set_flag(flag)
        applied.setdefault("builder_flags", []).append(name)
    for name in plan.clear_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:
            config.clear_flag(flag)
            applied.setdefault("cleared_builder_flags", []).append(name)
    if plan.profile:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in plan.profile.items():
            profile.set_shape(name, lo, opt, hi)
        index = config.add_optimization_profile(profile)
        if index is not None and int(index) < 0:
            raise UserError("TensorRT rejected the optimization profile (check --batch-profile against the model's input).")
        applied["profiles"] = 1
    if plan.default_device == "DLA":
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)
        applied["default_device_type"] = "DLA"
        applied["DLA_core"] = int(plan.dla_core)
    if plan.timing_cache is not None:
        cache = config.create_timing_cache(timing_cache_bytes or b"")
        if cache is None:
            raise UserError(f"The timing cache '{plan.timing_cache}' is not a TensorRT timing cache (damaged?); delete "
                            "it or pass another --timing-cache file.")
        # ignore_mismatch=False: TensorRT refuses (returns False) a cache made by another TensorRT or device
        if config.set_timing_cache(cache, False) is False:
            raise UserError(f"The timing cache '{plan.timing_cache}' was made by another TensorRT version or GPU; "
                            "delete it or pass another --timing-cache file.")
        applied["timing_cache"] = {"path": str(plan.timing_cache), "loaded_bytes": len(timing_cache_bytes or b"")}
    return applied


# ----------------------------------------------------------------------------- rebuild command


def rebuild_command(onnx_path: str | Path, engine: str | Path, options: BuildOptions,
                    plan: "BuildPlan | None" = None) -> str:
    """The ``ulsam-deploy build-trt`` command that reproduces this build (stored in the engine sidecar); profiles
    the plan took from the sidecar are spelled out, so the command does not depend on it."""
    args = ["ulsam-deploy", "build-trt", str(onnx_path), "-o", str(engine)]
    batch = options.batch or (plan.batch if plan is not None else None)
    sizes = options.sizes or (plan.sizes if plan is not None else None)
    if batch:
        args += ["--batch-profile", str(batch)]
    if sizes:
        args += ["--size-profile", str(sizes)]
    if options.workspace_mib:
        args += ["--workspace", str(options.workspace_mib)]
    if options.opt_level is not None:
        args += ["--opt-level", str(options.opt_level)]
    if options.timing_cache:
        args += ["--timing-cache", str(options.timing_cache)]
    if options.dla_core is not None:
        args += ["--dla-core", str(options.dla_core)]
    if options.gpu_fallback:
        args.append("--gpu-fallback")
    if options.plugin:
        args += ["--plugin", options.plugin]
    if options.plugin_lib:
        args += ["--plugin-lib", str(options.plugin_lib)]
    if options.weakly_typed:
        args.append("--weakly-typed")
    if options.fp16:
        args.append("--fp16")
    if options.int8:
        args.append("--int8")
    if options.tf32:
        args.append("--tf32")
    args.append("--force")
    return shlex.join(args)


__all__ = ["BatchProfile", "BuildOptions", "BuildPlan", "OnnxInfo", "OnnxInput", "SizeProfile", "apply_plan",
           "describe_onnx",
           "network_creation_flags", "plan_build", "rebuild_command"]

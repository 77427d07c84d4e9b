"""Read weights and graph structure out of a ``.tflite`` flatbuffer.

No interpreter is involved: the ``tflite`` package only decodes the
flatbuffer schema. The networks themselves are rebuilt in torch
(:mod:`ttsha.engine.fastspeech2`, :mod:`ttsha.engine.mbmelgan`); this module
gives them named access to the constants.

Constants in a converted model are deduplicated, so a tensor's *name* may
belong to another layer that happened to hold the same bytes. Operator
*outputs* are never shared, so layers are located by the name of the tensor
an operator produces, and weights are taken from that operator's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import EngineError

_NUMPY_TYPES = {
    0: np.float32,  # FLOAT32
    2: np.int32,  # INT32
    4: np.int64,  # INT64
    6: np.bool_,  # BOOL
    9: np.int8,  # INT8
}


def conv1d_weight(w: np.ndarray):
    """TFLite conv filter ``[out, 1, k, in]`` -> torch conv1d weight ``[out, in, k]``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(w[:, 0].transpose(0, 2, 1)))


class _Table(Protocol):
    """A flatbuffers table (an operator's options): where it starts in which buffer."""

    Bytes: bytearray
    Pos: int


@dataclass(frozen=True)
class Op:
    """One operator of the graph, with tensor indices for inputs and outputs."""

    index: int
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: _Table | None


class TFLiteModel:
    """A parsed ``.tflite`` file: constant tensors and operator list."""

    def __init__(self, path: Path) -> None:
        try:
            import tflite
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise EngineError("the 'tflite' package is required to read model weights") from exc
        self.path = Path(path)
        try:
            self._buf = self.path.read_bytes()
            self._model = tflite.Model.GetRootAsModel(self._buf, 0)
            self._graph = self._model.Subgraphs(0)
        except (OSError, Exception) as exc:
            raise EngineError(f"cannot read model file {self.path}: {exc}") from exc
        if self._graph is None:
            raise EngineError(f"{self.path} holds no graph")
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        self._tflite = tflite
        self.ops: list[Op] = []
        for i in range(self._graph.OperatorsLength()):
            raw = self._graph.Operators(i)
            code = self._model.OperatorCodes(raw.OpcodeIndex())
            kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
            if kind == "CUSTOM":
                kind = "CUSTOM:" + code.CustomCode().decode()
            self.ops.append(
                Op(
                    index=i,
                    kind=kind,
                    inputs=tuple(int(raw.Inputs(j)) for j in range(raw.InputsLength())),
                    outputs=tuple(int(raw.Outputs(j)) for j in range(raw.OutputsLength())),
                    options=raw.BuiltinOptions(),
                )
            )
        self._producer = {out: op for op in self.ops for out in op.outputs}
        self._consumers: dict[int, list[Op]] = {}
        for op in self.ops:
            for t in op.inputs:
                self._consumers.setdefault(t, []).append(op)

    # -- tensors ---------------------------------------------------------
    def name(self, tensor: int) -> str:
        """The tensor's name; fused names keep only their first part."""
        return self._graph.Tensors(tensor).Name().decode().split(";")[0]

    def is_const(self, tensor: int) -> bool:
        if tensor < 0:
            return False
        t = self._graph.Tensors(tensor)
        return self._model.Buffers(t.Buffer()).DataLength() > 0

    def const(self, tensor: int) -> np.ndarray:
        """A constant tensor as float32 (int8 weights dequantized) or its integer type."""
        t = self._graph.Tensors(tensor)
        buf = self._model.Buffers(t.Buffer())
        if buf.DataLength() == 0:
            raise EngineError(f"{self.path}: tensor {tensor} ({self.name(tensor)}) is not a constant")
        dtype = _NUMPY_TYPES.get(t.Type())
        if dtype is None:
            raise EngineError(f"{self.path}: unsupported tensor type {t.Type()} for {self.name(tensor)}")
        shape = [int(s) for s in t.ShapeAsNumpy()] if t.ShapeLength() else []
        data: np.ndarray = np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=dtype).reshape(shape)
        quant = t.Quantization()
        if dtype is np.int8 and quant is not None and quant.ScaleLength():
            scale = quant.ScaleAsNumpy().astype(np.float32)
            zero = quant.ZeroPointAsNumpy().astype(np.float32) if quant.ZeroPointLength() else 0.0
            if scale.size > 1:  # per-channel along QuantizedDimension
                axis = quant.QuantizedDimension()
                bshape = [1] * data.ndim
                bshape[axis] = scale.size
                scale = scale.reshape(bshape)
                zero = np.asarray(zero).reshape(bshape) if np.ndim(zero) else zero
            return ((data.astype(np.float32) - zero) * scale).astype(np.float32)
        return data.copy()

    def is_int8(self, tensor: int) -> bool:
        return self._graph.Tensors(tensor).Type() == 9

    def quant_scale(self, tensor: int) -> float | None:
        """Scale of a quantized activation tensor, if it has one."""
        quant = self._graph.Tensors(tensor).Quantization()
        if quant is None or not quant.ScaleLength():
            return None
        return float(quant.Scale(0))

    # -- operators -------------------------------------------------------
    def producer(self, tensor: int) -> Op | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: int) -> list[Op]:
        return self._consumers.get(tensor, [])

    def find(self, kind: str, prefix: str, exact: bool = False) -> list[Op]:
        """Operators of ``kind`` whose first output is named ``prefix`` (or starts with it)."""
        return [
            op
            for op in self.ops
            if op.kind == kind
            and (self.name(op.outputs[0]) == prefix if exact else self.name(op.outputs[0]).startswith(prefix))
        ]

    def find_one(self, kind: str, prefix: str, exact: bool = False) -> Op:
        found = self.find(kind, prefix, exact)
        if len(found) != 1:
            raise EngineError(
                f"{self.path.name}: expected one {kind} under {prefix!r}, found {len(found)}; "
                "is this the model file ttsha was built for?"
            )
        return found[0]

    def const_inputs(self, op: Op) -> list[np.ndarray]:
        return [self.const(t) for t in op.inputs if self.is_const(t)]

    def bias_after(self, op: Op) -> np.ndarray | None:
        """The constant added to ``op``'s output, following reshapes (TF ``BiasAdd``)."""
        tensor = op.outputs[0]
        for _ in range(4):
            users = self.consumers(tensor)
            if len(users) != 1:
                return None
            nxt = users[0]
            if nxt.kind == "ADD":
                consts = self.const_inputs(nxt)
                return consts[0] if consts else None
            if nxt.kind not in ("SQUEEZE", "RESHAPE", "BATCH_TO_SPACE_ND"):
                return None
            tensor = nxt.outputs[0]
        return None

    def fused_activation(self, op: Op) -> int:
        """The fused activation code of an ADD/SUB/MUL/CONV op (0 none, 1 relu)."""
        opt_cls = {
            "ADD": "AddOptions",
            "SUB": "SubOptions",
            "MUL": "MulOptions",
            "CONV_2D": "Conv2DOptions",
        }.get(op.kind)
        if opt_cls is None or op.options is None:
            return 0
        opts = getattr(self._tflite, opt_cls)()
        opts.Init(op.options.Bytes, op.options.Pos)
        return int(opts.FusedActivationFunction())

    def _options(self, op: Op) -> _Table:
        if op.options is None:
            raise EngineError(f"{self.path}: {op.kind} operator {op.index} has no options")
        return op.options

    def transpose_conv_stride(self, op: Op) -> tuple[int, int]:
        opts = self._tflite.TransposeConvOptions()
        options = self._options(op)
        opts.Init(options.Bytes, options.Pos)
        return int(opts.StrideH()), int(opts.StrideW())

    def leaky_relu_alpha(self, op: Op) -> float:
        opts = self._tflite.LeakyReluOptions()
        options = self._options(op)
        opts.Init(options.Bytes, options.Pos)
        return float(opts.Alpha())

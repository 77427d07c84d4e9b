"""Multi-band MelGAN vocoder (log-mel -> 24 kHz waveform) in torch.

The generator upsamples mel frames by transposed convolutions, each followed
by residual stacks of dilated convolutions with reflection padding, and
predicts 4 sub-band signals; a PQMF synthesis filter bank (whose filters are
stored in the model file) recombines them into one full-band waveform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EngineError
from .tflite_reader import Op, TFLiteModel, conv1d_weight

#: Mel frames of context on each side of a part (see :meth:`MBMelGAN.in_parts`):
#: more than the generator's receptive field plus the PQMF filter's length.
CONTEXT_FRAMES = 24


def _tconv_weight(w: np.ndarray, time_axis: int) -> torch.Tensor:
    """TFLite transposed-conv filter ``[out, h, w, in]`` -> torch ``[in, out, k]``.

    Keras stores a 1-D transposed convolution as 2-D with time on either the
    height or the width axis; ``time_axis`` (1 or 2) says which.
    """
    w = w[:, :, 0, :] if time_axis == 1 else w[:, 0, :, :]
    return torch.from_numpy(np.ascontiguousarray(w.transpose(2, 0, 1)))


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad, pad), mode="reflect")`` on the time axis, in one
    concatenation: about 5x faster than torch's reflection_pad1d kernel here."""
    if pad >= x.shape[-1]:
        return F.pad(x, (pad, pad), mode="reflect")  # raises the usual error
    return torch.cat([x[..., 1 : pad + 1].flip(-1), x, x[..., -pad - 1 : -1].flip(-1)], dim=-1)


@dataclass
class _Conv:
    """A valid convolution preceded by reflection padding."""

    weight: torch.Tensor
    bias: torch.Tensor
    pad: int = 0
    dilation: int = 1

    def __post_init__(self) -> None:
        # A kernel-1 convolution is a matrix product. As one, it runs about
        # twice as fast: oneDNN's conv1d copies its input to another memory
        # layout and back on every call (a fifth of the vocoder's time).
        self._matrix: torch.Tensor | None = None
        if self.weight.shape[-1] == 1 and not self.pad:
            self._matrix = self.weight[:, :, 0].contiguous()
            self._column_bias = self.bias[:, None].contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._matrix is not None:
            if x.shape[0] == 1:
                return torch.addmm(self._column_bias, self._matrix, x[0])[None]
            return torch.matmul(self._matrix, x) + self._column_bias
        if self.pad:
            x = _reflect_pad(x, self.pad)
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation)


@dataclass
class _Upsample:
    """Transposed convolution with TensorFlow ``SAME`` output cropping."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        y = F.conv_transpose1d(x, self.weight, self.bias, stride=self.stride)
        crop = max(self.weight.shape[-1] - self.stride, 0) // 2
        return y[..., crop : crop + n * self.stride]


@dataclass
class _ResidualStack:
    shortcut: _Conv
    dilated: _Conv
    pointwise: _Conv
    alpha: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dilated(F.leaky_relu(x, self.alpha))
        h = self.pointwise(F.leaky_relu(h, self.alpha))
        return self.shortcut(x) + h


class MBMelGAN(nn.Module):
    """Mel ``[1, frames, 80]`` -> waveform ``[samples]`` (float32)."""

    def __init__(
        self,
        first: _Conv,
        blocks: list[tuple[_Upsample, list[_ResidualStack]]],
        last: _Conv,
        synthesis_up: torch.Tensor,
        synthesis_filter: torch.Tensor,
        subbands: int,
        alpha: float,
        subband_scale: float | None,
    ) -> None:
        super().__init__()
        self.first, self.blocks, self.last = first, blocks, last
        self.synthesis_up, self.synthesis_filter = synthesis_up, synthesis_filter
        self.subbands, self.alpha = subbands, alpha
        #: The converted model rounds sub-band signals to int8 before the PQMF.
        #: ``emulate_int8`` reproduces that (for comparisons); the default skips
        #: it, since the rounding only adds noise.
        self.subband_scale = subband_scale
        self.emulate_int8 = False

    @property
    def hop_length(self) -> int:
        hop = self.subbands
        for up, _ in self.blocks:
            hop *= up.stride
        return hop

    def in_parts(self, mel: torch.Tensor, first_frames: int, context: int = CONTEXT_FRAMES):
        """Yield the waveform of ``mel`` in two parts, the first covering
        ``first_frames`` frames, so a player can start before the rest is done.

        Each part is computed with ``context`` extra frames on its open side
        and cropped, so it matches the one-pass output up to float rounding
        (24 frames: within 1e-5, under one 16-bit step; tests/engine checks).
        """
        frames, hop = mel.shape[1], self.hop_length
        if frames <= first_frames + context:
            yield self(mel)
            return
        head = self(mel[:, : first_frames + context])
        yield head[: first_frames * hop]
        start = first_frames - context
        tail = self(mel[:, start:])
        yield tail[context * hop :]

    @torch.inference_mode()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.first(mel.transpose(1, 2))
        for up, stacks in self.blocks:
            x = up(F.leaky_relu(x, self.alpha))
            for stack in stacks:
                x = stack(x)
        bands = torch.tanh(self.last(F.leaky_relu(x, self.alpha)))
        if self.emulate_int8 and self.subband_scale:
            bands = torch.clamp(torch.round(bands / self.subband_scale), -128, 127) * self.subband_scale
        full = F.conv_transpose1d(bands, self.synthesis_up, stride=self.subbands)
        taps = self.synthesis_filter.shape[-1]
        full = F.pad(full, ((taps - 1) // 2, taps // 2))
        return F.conv1d(full, self.synthesis_filter)[0, 0]

    def prepared(self) -> dict:
        """The generator and PQMF as plain tensors and numbers (``torch.load(weights_only=True)`` reads it back)."""

        def conv(c: _Conv) -> dict:
            return {"weight": c.weight, "bias": c.bias, "pad": c.pad, "dilation": c.dilation}

        return {
            "first": conv(self.first),
            "blocks": [{"weight": up.weight, "bias": up.bias, "stride": up.stride,
                        "stacks": [[conv(s.shortcut), conv(s.dilated), conv(s.pointwise)] for s in stacks]}
                       for up, stacks in self.blocks],
            "last": conv(self.last),
            "synthesis_up": self.synthesis_up,
            "synthesis_filter": self.synthesis_filter,
            "subbands": self.subbands,
            "alpha": self.alpha,
            "subband_scale": self.subband_scale,
        }

    @classmethod
    def from_prepared(cls, state: dict) -> MBMelGAN:
        """The vocoder :meth:`prepared` described, without parsing the model file again."""
        alpha = float(state["alpha"])

        def conv(c: dict) -> _Conv:
            return _Conv(c["weight"], c["bias"], int(c["pad"]), int(c["dilation"]))

        blocks = [(_Upsample(b["weight"], b["bias"], int(b["stride"])),
                   [_ResidualStack(conv(s), conv(d), conv(p), alpha) for s, d, p in b["stacks"]])
                  for b in state["blocks"]]
        scale = state["subband_scale"]
        return cls(conv(state["first"]), blocks, conv(state["last"]), state["synthesis_up"],
                   state["synthesis_filter"], int(state["subbands"]), alpha,
                   None if scale is None else float(scale)).eval()

    @classmethod
    def from_tflite(cls, model: TFLiteModel) -> MBMelGAN:
        """Rebuild the generator and PQMF from the operators of ``model``."""
        convs = [op for op in model.ops if op.kind == "CONV_2D"]
        tconvs = [op for op in model.ops if op.kind == "TRANSPOSE_CONV"]
        leaky = [op for op in model.ops if op.kind == "LEAKY_RELU"]
        if len(tconvs) < 2 or not leaky:
            raise EngineError(f"{model.path.name} does not look like a multi-band MelGAN")
        alpha = model.leaky_relu_alpha(leaky[0])
        *upsamplers, pqmf_up = tconvs
        pqmf_conv = convs[-1]

        def conv(op: Op) -> _Conv:
            weight, *extra = model.const_inputs(op)
            bias = np.zeros(weight.shape[0], np.float32)
            for part in (*extra, model.bias_after(op)):
                if part is not None and part.size == bias.size:
                    bias = bias + part
            return _Conv(conv1d_weight(weight), torch.from_numpy(bias), *_padding_and_dilation(model, op))

        def upsample(op: Op) -> _Upsample:
            weight = model.const_inputs(op)[0]  # [output_shape] is not constant; the filter is
            bias = model.bias_after(op)
            bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
            stride_h, stride_w = model.transpose_conv_stride(op)
            time_axis = 1 if stride_h >= stride_w else 2
            return _Upsample(_tconv_weight(weight, time_axis), torch.from_numpy(bias), max(stride_h, stride_w))

        stage_of = lambda op: (model.name(op.outputs[0]).split("/") + [""])[1]  # noqa: E731
        blocks: list[tuple[_Upsample, list[_ResidualStack]]] = []
        for i, up in enumerate(upsamplers):
            stage = f"residual_stack_._{i}."
            names = sorted({stage_of(op) for op in convs if stage_of(op).startswith(stage)})
            stacks = []
            for name in names:
                ops = [op for op in convs if stage_of(op) == name]
                shortcut = [op for op in ops if "/shortcut/" in model.name(op.outputs[0])]
                body = [op for op in ops if op not in shortcut]
                if len(shortcut) != 1 or len(body) != 2:
                    raise EngineError(f"{model.path.name}: unexpected layout of {name}")
                stacks.append(_ResidualStack(conv(shortcut[0]), conv(body[0]), conv(body[1]), alpha))
            if not stacks:
                raise EngineError(f"{model.path.name}: no residual stacks after upsampler {i}")
            blocks.append((upsample(up), stacks))
        first, last = conv(convs[0]), conv(convs[-2])
        quant = [op for op in model.ops if op.kind == "QUANTIZE"]
        subband_scale = model.quant_scale(quant[0].outputs[0]) if quant else None
        synthesis_up = upsample(pqmf_up).weight
        filt = model.const_inputs(pqmf_conv)[0]  # [1, 1, taps, subbands]
        synthesis_filter = conv1d_weight(filt)
        subbands = int(synthesis_up.shape[0])
        return cls(first, blocks, last, synthesis_up, synthesis_filter, subbands, alpha, subband_scale).eval()


def _padding_and_dilation(model: TFLiteModel, conv: Op) -> tuple[int, int]:
    """Walk back from a conv to its reflection pad and space-to-batch (dilation)."""
    pad, dilation = 0, 1
    tensor = conv.inputs[0]
    for _ in range(4):
        op = model.producer(tensor)
        if op is None:
            break
        if op.kind == "SPACE_TO_BATCH_ND":
            dilation = int(model.const(op.inputs[1]).reshape(-1)[0])
        elif op.kind == "MIRROR_PAD":
            pad = int(model.const(op.inputs[1])[1, 0])
            break
        elif op.kind != "EXPAND_DIMS":
            break
        tensor = op.inputs[0]
    return pad, dilation

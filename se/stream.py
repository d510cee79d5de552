"""Real-time enhancement: a causal FRCRN run one STFT hop at a time with cached layer state.

    enhancer = StreamingEnhancer(model)        # FRCRN(causal=True), eval mode
    for chunk in chunks:                       # any sizes, float samples at 16 kHz
        out = enhancer.process(chunk)          # the samples that became final
    out = enhancer.flush()                     # the rest: total output = total input length

The concatenated outputs equal ``model.enhance`` of the whole signal (the offline causal
output, the same zero padding) within float32 rounding, sample for sample: output sample n
is returned as soon as input sample n + win_len - 1 has arrived, so the algorithmic latency
is one window (``latency`` samples, 40 ms for the released STFT).

Per hop (shape legend as in se/models/kernels/frcrn.py: F bins, C channels, maps (1, F, 1, 2C)):
the newest frame of the input buffer goes through the STFT kernel, both U-Nets one frame at a
time and the iSTFT kernel, and is overlap-added.  Cached state per layer: the previous input
frame of every encoder and decoder (time kernel 2), the last lorder - 1 projections of both
time-FSMN layers, the running sums of every SE layer, the overlap-add buffer.  Frequency
FSMNs and the 1x1 output convolution have no time context.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from se.models.frcrn import _DEPTH, _LEAKY_SLOPE, _STRIDE, FRCRN
from se.models.kernels.frcrn import complex_cat, folded_weights, fsmn_weights, real_weight


class StreamingEnhancer:
    """Hop-by-hop enhancement with a causal FRCRN (see the module docstring).

    ``hop_seconds`` collects the compute time of every hop (for timing statistics).
    """

    def __init__(self, model: FRCRN):
        if not model.causal:
            raise ValueError("streaming needs a causal FRCRN (network_kwargs causal: true); "
                             "the released network looks ahead in time and averages whole utterances")
        if model.training:
            raise ValueError("streaming needs the model in eval mode (batch norms with running statistics)")
        self.model = model
        self.hop = model.win_inc
        self.win = model.win_len
        self.edge = self.win - self.hop  # zeros before the signal, as FRCRN.enhance pads
        param = model.stft.weight
        self.device, self.dtype = param.device, param.dtype
        self.np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        self.hop_seconds: list[float] = []
        self._unets = [_UNetState(model.unet, model.se_time_decay), _UNetState(model.unet2, model.se_time_decay)]
        self.reset()

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples: one STFT window (output sample n needs input up to
        n + latency - 1)."""
        return self.win

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency / self.model.sampling_rate

    def reset(self) -> None:
        """Forget the signal: a new stream starts (all layer states zero).  The model's weights
        are read here (BN folded), so call it after changing them."""
        self._inbuf = np.zeros(self.edge, dtype=self.np_dtype)  # samples not yet consumed by a frame
        self._prepare_stft()
        tail = self.win - self.hop  # overlap-add sums still waiting for later frames
        self._ola = torch.zeros(tail, dtype=self.dtype, device=self.device)
        self._norm = torch.zeros(tail, dtype=self.dtype, device=self.device)  # sum of window^2
        self._skip = self.edge  # leading output samples that belong to the padding
        self._received = 0
        self._emitted = 0
        for unet in self._unets:
            unet.reset()

    @torch.inference_mode()
    def process(self, chunk) -> np.ndarray:
        """Feed samples (any length, 1-D); returns the output samples that became final."""
        chunk = np.asarray(chunk, dtype=self.np_dtype).reshape(-1)
        self._received += chunk.size
        self._inbuf = np.concatenate([self._inbuf, chunk])
        outputs = []
        while self._inbuf.size >= self.win:
            outputs.append(self._hop(self._inbuf[: self.win]))
            self._inbuf = self._inbuf[self.hop :]
        return self._emit(outputs)

    @torch.inference_mode()
    def flush(self) -> np.ndarray:
        """End of the signal: zero-pads until every input sample has its output (the same
        padding as FRCRN.enhance), returns those outputs and resets for a new stream."""
        outputs, produced, skip = [], 0, self._skip
        while self._emitted + produced < self._received:
            need = self.win - self._inbuf.size
            if need > 0:
                self._inbuf = np.concatenate([self._inbuf, np.zeros(need, self.np_dtype)])
            out = self._hop(self._inbuf[: self.win])
            self._inbuf = self._inbuf[self.hop :]
            outputs.append(out)
            drop = min(skip, out.size)
            skip -= drop
            produced += out.size - drop
        before = self._emitted
        out = self._emit(outputs)[: self._received - before]
        self.reset()
        return out

    # -- internals ----------------------------------------------------------------------------
    def _emit(self, outputs: list[np.ndarray]) -> np.ndarray:
        out = np.concatenate(outputs) if outputs else np.zeros(0, self.np_dtype)
        if self._skip:
            drop = min(self._skip, out.size)
            out, self._skip = out[drop:], self._skip - drop
        self._emitted += out.size
        return out

    def _prepare_stft(self) -> None:
        """STFT / iSTFT kernels as (2F, win) / (win, 2F) matrices whose spectrum rows are
        interleaved (bin, real / imag): the spectrum of a frame is then the U-Nets' (1, F, 1, 2)
        input as it is, and the masked spectrum a complex product of (F, 2) views."""
        model = self.model
        with torch.no_grad():
            bins = model.stft.weight.shape[0] // 2
            order = torch.arange(2 * bins).view(2, bins).t().reshape(-1)  # row 2f + plane
            self._stft_w = model.stft.weight.view(-1, self.win)[order].contiguous()
            self._istft_w = model.istft.weight.view(-1, self.win)[order].t().contiguous()
            self._win2 = (model.istft.window.view(-1) ** 2).contiguous()

    def _hop(self, frame: np.ndarray) -> np.ndarray:
        """One STFT frame (win_len samples) -> the next hop of output samples."""
        start = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, self.dtype)
        spec = torch.mv(self._stft_w, x).view(1, -1, 1, 2)  # (1, F, 1, 2): the STFT conv, one frame
        u1 = self._unets[0].step(spec)  # (1, F, 1, 2)
        u2 = self._unets[1].step(u1)
        mask = torch.tanh(u2).add_(torch.tanh(u1))  # _apply_mask: tanh(U2) + tanh(U1), complex
        est = torch.view_as_complex(spec.view(-1, 2)) * torch.view_as_complex(mask.view(-1, 2))  # (F,)
        frame_out = torch.mv(self._istft_w, torch.view_as_real(est).view(-1))  # (win,)
        tail = self._ola.shape[0]
        frame_out[:tail] += self._ola  # overlap-add with the earlier frames' pending sums
        norm = self._win2.clone()
        norm[:tail] += self._norm
        out = (frame_out[: self.hop] / (norm[: self.hop] + 1e-8)).cpu().numpy()
        self._ola, self._norm = frame_out[self.hop :], norm[self.hop :]
        self.hop_seconds.append(time.perf_counter() - start)
        return out


# frequency-FSMN memories of at most this many products (F x K x 4C) run as one product over
# an unfolded view; larger ones as one multiply-add per tap (no large temporary), as do maps
# of F <= 2 (at most one tap reaches the data).  Measured on one AVX2 core: the unfolded
# product is faster up to about 0.5M products (F = 159 at C = 32, F = 78 at C = 64); above,
# its temporary (megabytes) slows the hop down (released width: 10 % slower with it).
_SMALL_MAP = 1 << 19


class _UNetState:
    """One ComplexUNet run one frame at a time (eval mode), with its per-layer state.

    The layers' derived weights (BN folded into the convolutions, stacked FSMN weights) are
    computed once per ``reset()``, so per hop only the arithmetic runs.
    """

    def __init__(self, unet, se_time_decay: float):
        self.unet = unet
        self.decay = se_time_decay

    def reset(self) -> None:
        u = self.unet
        with torch.no_grad():
            self.enc_w = [_encoder_weights(*folded_weights(getattr(u, f"encoder{i}"))) for i in range(_DEPTH)]
            self.dec_w = [_decoder_weights(*folded_weights(getattr(u, f"decoder{i}"))) for i in range(_DEPTH)]
            self.dec_bias = [None] * _DEPTH  # (F', 2Cout) bias rows, built on the first frame
            self.freq_w = {name: _freq_fsmn_weights(getattr(u, name)) for name in
                           [f"fsmn_enc{i}" for i in range(1, _DEPTH)] + [f"fsmn_dec{i}" for i in range(_DEPTH - 1)]}
            self.se_w = {name: _se_weights(getattr(u, name)) for name in
                         [f"se_layer_enc{i}" for i in range(_DEPTH - 1)] + [f"se_layer_dec{i}" for i in range(_DEPTH - 2)]}
            self.time_w = [_detached(fsmn_weights(getattr(u.fsmn, f"fsmn_re_{layer}"),
                                                  getattr(u.fsmn, f"fsmn_im_{layer}"))) for layer in ("L1", "L2")]
            self.out_w = _linear_weights(u.linear)
        self.enc_prev = [None] * _DEPTH  # previous input frame of each encoder (1, 2Cin, F, 1)
        self.dec_prev = [None] * _DEPTH
        self.fsmn_hist = [None, None]  # per time-FSMN layer: (2C, K - 1, plane) past projections
        self.se_num = {}  # SE layer name -> (2C,) decayed sum of frame means
        self.se_den = {}  # SE layer name -> decayed frame count (a Python float)

    # layers ------------------------------------------------------------------------------------
    def _encoder(self, i: int, h: torch.Tensor) -> torch.Tensor:  # (1, F, 1, 2Cin) -> (1, F', 1, 2Cout)
        """frame t = W[.., 0] * in[t - 1] + W[.., 1] * in[t] (Encoder: past-side padding), as
        one matrix product of the frequency windows (stride 2) with the folded weight."""
        weight, bias, kernel = self.enc_w[i]  # (2 * 2Cin * kF, 2Cout) rows (time tap, cin, kf)
        cur = h.view(h.shape[1], -1)  # (F, 2Cin)
        prev = self.enc_prev[i] if self.enc_prev[i] is not None else torch.zeros_like(cur)
        self.enc_prev[i] = cur
        windows = torch.stack([prev, cur], 1).unfold(0, kernel, _STRIDE[0])  # (F', 2, 2Cin, kF)
        y = torch.addmm(bias, windows.reshape(windows.shape[0], -1), weight)  # (F', 2Cout)
        return F.leaky_relu_(y, _LEAKY_SLOPE).view(1, y.shape[0], 1, -1)

    def _decoder(self, i: int, h: torch.Tensor) -> torch.Tensor:  # (1, F, 1, 2Cin) -> (1, F', 1, 2Cout)
        """frame t = W[.., 0] * in[t] + W[.., 1] * in[t - 1] (Decoder: unpadded, last frame
        trimmed): one matrix product per frame, then the stride-2 overlap-add along F."""
        weight, bias, kernel = self.dec_w[i]  # (2 * 2Cin, kF * 2Cout) rows [cur taps; prev taps]
        cur = h.view(h.shape[1], -1)  # (F, 2Cin)
        prev = self.dec_prev[i] if self.dec_prev[i] is not None else torch.zeros_like(cur)
        self.dec_prev[i] = cur
        cols = torch.mm(torch.cat([cur, prev], 1), weight)  # (F, kF * 2Cout): input bin f, tap k
        rows = self.dec_bias[i]
        if rows is None:  # the bias on every output bin, made once per stream
            rows = self.dec_bias[i] = bias.repeat((cur.shape[0] - 1) * _STRIDE[0] + kernel, 1)  # (F', 2Cout)
        y = torch.index_add(rows, 0, _overlap_index(cur.shape[0], kernel), cols.view(-1, rows.shape[1]))
        return F.leaky_relu_(y, _LEAKY_SLOPE).view(1, rows.shape[0], 1, -1)  # output bin 2f + k

    def _se(self, name: str, h: torch.Tensor) -> torch.Tensor:  # (1, F, 1, 2C)
        """ComplexSELayer on one frame: the decayed running mean of the frame means through
        both MLPs as three matrix-vector products (see ``_se_weights``)."""
        rows = h.view(h.shape[1], -1)  # (F, 2C)
        num = self.se_num.get(name)  # the frame mean 1/F rows^T 1 is added as one mat-vec
        if num is None:
            num = self.se_num[name] = torch.mv(rows.t(), _mean_weights(rows.shape[0], rows.dtype, rows.device))
        else:
            num = torch.addmv(num, rows.t(), _mean_weights(rows.shape[0], rows.dtype, rows.device),
                              beta=self.decay)
            self.se_num[name] = num
        den = self.se_den[name] = self.se_den.get(name, 0.0) * self.decay + 1.0
        w1, b1, w2, b2, combine = self.se_w[name]
        hid = torch.addmv(b1, w1, num, alpha=1.0 / den).relu_()  # (4 hidden,): mean = num / den
        g = torch.addmv(b2, w2, hid).sigmoid_()  # (4C,): fc_r(a_r), fc_r(a_i), fc_i(a_r), fc_i(a_i)
        return h * torch.mv(combine, g)  # gate (2C,): [fc_r(a_r) - fc_i(a_i), fc_r(a_i) + fc_i(a_r)]

    def _freq_fsmn(self, name: str, h: torch.Tensor) -> torch.Tensor:  # (1, F, 1, 2C), memory along F
        """One frame of a frequency FSMN pair (kernels ``complex_fsmn`` along F, T = 1).

        Both FSMNs run on both planes: P (fsmn, F, plane x C) from two products, then the
        memory, a per-channel FIR along F (``_fir``).  fsmn_im's taps on the imaginary plane
        are negated, so the output is X + Z[re] + (signs * X + Z[im]) with the planes of the
        last term swapped: no per-plane products or concatenation.
        """
        w_x, bias, w_proj, taps, signs = self.freq_w[name]  # (C, 2H), (2H,), (2, H, C), (K, 2, 1, 2C), (2C,)
        freq, channels = h.shape[1], w_x.shape[0]
        x = h.view(freq, 2 * channels)  # (F, plane x C)
        hid = torch.addmm(bias, x.view(freq * 2, channels), w_x).relu_()  # (F * 2, 2H): rows (f, plane)
        p = torch.bmm(hid.view(freq * 2, 2, -1).transpose(0, 1), w_proj)  # (fsmn, F * 2, C)
        z = _fir(p.view(2, freq, 2 * channels), taps)  # (fsmn, F, plane x C)
        # fsmn_re(x_r) - fsmn_im(x_i), fsmn_re(x_i) + fsmn_im(x_r), each FSMN with its input X
        # term; the minus of fsmn_im(x_i)'s P and memory terms is in the taps, that of x_i in signs
        im = torch.addcmul(z[1], x, signs).view(freq, 2, channels).flip(1)  # (F, plane, C)
        out = torch.add(x, z[0]).add_(im.view(freq, -1))
        return out.view(1, freq, 1, 2 * channels)

    def _time_fsmn(self, h: torch.Tensor) -> torch.Tensor:  # (1, 1, 1, 2C), memory along T
        """One step of the bottleneck FSMN's two layers (as _ComplexFsmnFunction, S = T)."""
        x = h.view(-1)
        for layer, (w_lin, w_proj, taps) in enumerate(self.time_w):
            channels, hidden, lorder = w_proj.shape[1], w_proj.shape[2], taps.shape[1]
            cols = torch.cat([x.view(2, channels).t(), x.new_ones(1, 2)])  # (C + 1, plane)
            hid = torch.mm(w_lin, cols).relu_()  # (2H, plane)
            p = torch.bmm(w_proj, hid.view(2, hidden, 2)).view(2 * channels, 1, 2)  # (2C, 1, plane)
            hist = self.fsmn_hist[layer]
            if hist is None:
                hist = p.new_zeros(2 * channels, lorder - 1, 2)  # zeros before the first frame
            seq = torch.cat([hist, p], 1)  # (2C, K, plane): steps t - K + 1 .. t
            self.fsmn_hist[layer] = seq[:, 1:]
            z = torch.bmm(taps[:, None, :], seq).view(2, channels, 2)  # P + memory(P): (fsmn, C, plane)
            z = z + cols[:channels]  # + X
            x = torch.cat([z[0, :, 0] - z[1, :, 1], z[0, :, 1] + z[1, :, 0]])  # (2C,): real, imag
        return x.view(1, 1, 1, -1)

    # one frame through the U-Net (ComplexUNet.forward with T = 1 and state) ------------------
    def step(self, x: torch.Tensor) -> torch.Tensor:  # (1, F, 1, 2) -> (1, F, 1, 2)
        skips = []
        h = x
        for i in range(_DEPTH):
            if i > 0:  # fsmn_enc0 is never used
                h = self._freq_fsmn(f"fsmn_enc{i}", h)
            h = self._encoder(i, h)
            if i < _DEPTH - 1:
                skips.append(self._se(f"se_layer_enc{i}", h))
        p = self._time_fsmn(h)  # (1, 1, 1, 2C)
        for i in range(_DEPTH):
            p = self._decoder(i, p)
            if i == _DEPTH - 1:
                break
            p = self._freq_fsmn(f"fsmn_dec{i}", p)
            if i < _DEPTH - 2:
                p = self._se(f"se_layer_dec{i}", p)
            p = complex_cat(p, skips[_DEPTH - 2 - i])
        weight, bias = self.out_w  # the 1x1 complex output convolution: (2, 2), (2,)
        return torch.addmm(bias, p.view(p.shape[1], 2), weight).view(1, -1, 1, 2)  # (1, F, 1, 2)


@functools.lru_cache(maxsize=64)
def _overlap_index(freq: int, kernel: int) -> torch.Tensor:
    """Output bin 2f + k of input bin f and tap k, in (f, k) order (stride-2 transposed conv)."""
    return (torch.arange(freq)[:, None] * _STRIDE[0] + torch.arange(kernel)[None, :]).reshape(-1)


@functools.lru_cache(maxsize=64)
def _mean_weights(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size,) vector of 1 / size: a mean over rows as a matrix-vector product."""
    return torch.full((size,), 1.0 / size, dtype=dtype, device=device)


def _detached(tensors):
    return tuple(t.detach().contiguous() for t in tensors)


def _se_weights(layer):
    """ComplexSELayer's two MLPs for one pooled vector [a_r, a_i] (2C,): block weights
    (4h, 2C), (4h,) of the first layers, (4C, 4h), (4C,) of the second ones, giving
    [fc_r(a_r), fc_r(a_i), fc_i(a_r), fc_i(a_i)], and the (2C, 4C) +-1 matrix that combines
    them into the complex gate [fc_r(a_r) - fc_i(a_i), fc_r(a_i) + fc_i(a_r)]."""
    (r1, _, r2, _), (i1, _, i2, _) = layer.fc_r, layer.fc_i
    first = [r1.weight, r1.weight, i1.weight, i1.weight]  # (h, C) each, on a_r, a_i, a_r, a_i
    w1 = torch.zeros(4 * r1.weight.shape[0], 2 * r1.weight.shape[1], dtype=r1.weight.dtype,
                     device=r1.weight.device)
    hidden, channels = r1.weight.shape
    for block, (weight, plane) in enumerate(zip(first, (0, 1, 0, 1))):
        w1[block * hidden : (block + 1) * hidden, plane * channels : (plane + 1) * channels] = weight
    w2 = torch.block_diag(r2.weight, r2.weight, i2.weight, i2.weight)  # (4C, 4h)
    eye = torch.eye(channels, dtype=w1.dtype, device=w1.device)
    zero = torch.zeros_like(eye)
    combine = torch.cat([torch.cat([eye, zero, zero, -eye], 1), torch.cat([zero, eye, eye, zero], 1)])
    return _detached((w1, torch.cat([r1.bias, r1.bias, i1.bias, i1.bias]), w2,
                      torch.cat([r2.bias, r2.bias, i2.bias, i2.bias]), combine))


def _linear_weights(conv):
    """The U-Net's 1x1 complex output convolution as a (2, 2) matrix on [real, imag] and its bias."""
    weight, bias = real_weight(conv)  # (2, 2, 1, 1) (out, in), (2,)
    return _detached((weight.view(2, 2).t(), bias))


def _freq_fsmn_weights(mod):
    """(C, 2H) input weights, (2H,) bias, (2, H, C) projections and (K, fsmn, 1, plane x C)
    memory taps (+1 on the current step) of a frequency FSMN pair; fsmn_im's taps on the
    imaginary plane are negated (its -fsmn_im(x_i) term); (plane x C) signs +1, -1 of X."""
    w_lin, w_proj, taps = fsmn_weights(mod.fsmn_re_L1, mod.fsmn_im_L1)  # taps (fsmn x C, K)
    channels, lorder = w_proj.shape[1], taps.shape[1]
    taps = taps.t().reshape(lorder, 2, 1, 1, channels).repeat(1, 1, 1, 2, 1)  # (K, fsmn, 1, plane, C)
    taps[:, 1, :, 1] *= -1
    signs = torch.ones(2, channels, dtype=taps.dtype, device=taps.device)
    signs[1] = -1  # +x_r, -x_i
    return _detached((w_lin[:, :channels].t(), w_lin[:, channels], w_proj.transpose(1, 2),
                      taps.reshape(lorder, 2, 1, 2 * channels), signs.view(-1)))


def _fir(p: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Causal per-channel FIR along dim 1 of p (G, S, D) with taps (K, G, 1, D), the last tap
    on the current step: out[:, s] = sum_k taps[k] * p[:, s - (K - 1 - k)] (zeros before s = 0).

    Small maps: one product over an unfolded view; large ones: one multiply-add per tap
    (no large temporary; taps that reach only the zero padding are skipped).  For one frame
    both beat oneDNN's grouped convolution, whose fixed cost per call dominates.
    """
    steps, lorder = p.shape[1], taps.shape[0]
    if p.numel() * lorder <= _SMALL_MAP and steps > 2:
        padded = F.pad(p, (0, 0, lorder - 1, 0))  # (G, K - 1 + S, D)
        return (padded.unfold(1, lorder, 1) * taps.permute(1, 2, 3, 0)).sum(-1)  # windows (G, S, D, K)
    z = p * taps[lorder - 1]
    for k in range(max(0, lorder - steps), lorder - 1):  # tap k reads step s - (K - 1 - k)
        lag = lorder - 1 - k
        z[:, lag:].addcmul_(p[:, : steps - lag], taps[k])
    return z


def _encoder_weights(weight: torch.Tensor, bias: torch.Tensor):
    """Folded conv weight (2Cout, 2Cin, kF, 2) -> (2 * 2Cin * kF, 2Cout), rows ordered as the
    flattened (time tap, cin, kf) windows of ``_UNetState._encoder``; bias; kF."""
    kernel = weight.shape[2]
    return weight.permute(3, 1, 2, 0).reshape(-1, weight.shape[0]).contiguous(), bias.contiguous(), kernel


def _decoder_weights(weight: torch.Tensor, bias: torch.Tensor):
    """Folded transposed-conv weight (2Cin, 2Cout, kF, 2) -> (2 * 2Cin, kF * 2Cout): time tap 0
    (current frame) over time tap 1 (previous frame); bias; kF."""
    kernel = weight.shape[2]
    stacked = torch.cat([weight[..., 0], weight[..., 1]], 0)  # (2 * 2Cin, 2Cout, kF)
    return stacked.permute(0, 2, 1).reshape(stacked.shape[0], -1).contiguous(), bias.contiguous(), kernel


def enhance_stream(model: FRCRN, x: np.ndarray) -> np.ndarray:
    """A whole normalised signal (L,) through a StreamingEnhancer -> float64 (L,)."""
    enhancer = StreamingEnhancer(model)
    y = np.concatenate([enhancer.process(x), enhancer.flush()])
    return y.astype(np.float64)


def hop_statistics(seconds: list[float], hop_s: float) -> dict:
    """mean / p99 / worst compute time per hop (ms), RTF and hops slower than real time."""
    t = np.asarray(seconds, dtype=np.float64)
    if t.size == 0:
        return {"hops": 0}
    return {"hops": int(t.size), "mean_ms": 1000 * float(t.mean()), "p99_ms": 1000 * float(np.percentile(t, 99)),
            "worst_ms": 1000 * float(t.max()), "rtf": float(t.mean() / hop_s),
            "late_hops": int((t > hop_s).sum())}

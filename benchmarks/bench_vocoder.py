"""Vocoding speed: seconds of audio made per second (x real time), ours against HiFi-GAN V1.

Why the unit vocoder is a Vocos and not a HiFi-GAN: at the same 50 tokens/s and 16 kHz, the Vocos
generator runs at the token rate and its ISTFT head makes each frame's 320 samples with one
linear layer, where HiFi-GAN V1 upsamples 320x through transposed convolutions and
multi-receptive-field blocks at the sample rate. Both generators are timed in the same process on
the same input; HiFi-GAN V1 (Kong et al. 2020: 512 channels, kernels 3/7/11, dilations 1/3/5) is
built from ``vocos.modules.ResBlock1``, HiFi-GAN's own block, with upsampling 10 x 8 x 2 x 2 = 320.

``python -m benchmarks.bench_vocoder [--seconds 10]``; the suite runs it as a phase.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from vocos.modules import ResBlock1

from benchmarks.common import Env, detect, time_fn
from zipper_pl.config import VocoderConfig
from zipper_pl.models.vocoder import UnitVocoder

HOP, SAMPLE_RATE, VOCAB = 320, 16000, 1024
# the demo's vocoder (experiments/demo/vocoder.yaml) and the published Vocos (s and l)
CASES = {
    "vocos demo": VocoderConfig(dim=128, intermediate_dim=384, n_layers=4),
    "vocos (s, l)": VocoderConfig(),
}


class HiFiGANV1(nn.Module):
    """HiFi-GAN V1's generator on unit embeddings, for timing (upsampling 10, 8, 2, 2)."""

    def __init__(self, channels: int = 512, rates=(10, 8, 2, 2)) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, channels)
        self.pre = nn.Conv1d(channels, channels, 7, padding=3)
        self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
        for i, r in enumerate(rates):
            c_in, c_out = channels // 2**i, channels // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, 2 * r, r, padding=r // 2))
            self.blocks.append(
                nn.ModuleList([ResBlock1(dim=c_out, kernel_size=k) for k in (3, 7, 11)])
            )
        self.post = nn.Conv1d(channels // 2 ** len(rates), 1, 7, padding=3)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        x = self.pre(self.embed(units).transpose(1, 2))  # [B, C, T]
        for up, blocks in zip(self.ups, self.blocks, strict=True):
            x = up(nn.functional.leaky_relu(x, 0.1))
            x = sum(b(x) for b in blocks) / len(blocks)
        return torch.tanh(self.post(nn.functional.leaky_relu(x)))  # [B, 1, ~T * 320]


def run(env: Env, seconds: float = 10.0, reps: int = 3) -> dict:
    """x real time of each generator on one utterance of ``seconds``, and its parameters."""
    frames = int(seconds * SAMPLE_RATE / HOP)
    units = torch.randint(0, VOCAB, (1, frames), device=env.device)
    nets = {name: UnitVocoder(cfg, vocab_size=VOCAB, hop=HOP) for name, cfg in CASES.items()}
    nets["hifi-gan v1"] = HiFiGANV1()
    out = {}
    for name, net in nets.items():
        net = net.to(env.device).eval()
        with torch.no_grad(), env.autocast():
            t = time_fn(lambda net=net: net(units), env, warmup=1, reps=reps)
        params = sum(p.numel() for n, p in net.named_parameters() if "duration" not in n)
        out[name] = {"x_realtime": seconds / t["median_s"], "params": params, **t}
        print(f"vocoding {name}: {out[name]['x_realtime']:.1f}x real time, {params / 1e6:.2f}M")
    return {"seconds": seconds, "cases": out}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_vocoder")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the utterance voiced")
    args = ap.parse_args()
    run(detect(), args.seconds)


if __name__ == "__main__":
    main()

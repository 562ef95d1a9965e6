"""The ``backbone`` stage's network: IResNet-50 (:mod:`pipeline.extractors.iresnet`, arcface_torch names) with an
expression head and a valence-arousal head on the global average of its ``bn2`` map, the map ``extract@iresnet``
stores (paper 3.1). Parts up to a ``freeze`` point get no gradient and keep their BN statistics.

Modules only: the start weights, optimiser, losses and files are :mod:`pipeline.training.backbone`'s and the stage's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipeline.extractors.iresnet import CHANNELS, IResNet
from pipeline.io.affectnet import N_CLASSES

# parts of IResNet in forward order; freeze = "layer3" freezes the stem and layer1..3 (and their BN statistics)
PARTS = ("stem", "layer1", "layer2", "layer3", "layer4")


def part_modules(net: IResNet, part: str) -> list[nn.Module]:
    """The modules of ``part`` (one of :data:`PARTS`): the stem is conv1, bn1 and prelu."""
    return [net.conv1, net.bn1, net.prelu] if part == "stem" else [getattr(net, part)]


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of ``state`` on the CPU (later training steps do not change it)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class BackboneNet(nn.Module):
    """IResNet-50 with two heads on its pooled ``bn2`` map: (B, 3, S, S) normalised RGB -> expression logits
    (B, 8) and valence-arousal (B, 2) in (-1, 1). Parts up to ``freeze`` get no gradient and keep their BN
    statistics (eval mode); ``fc`` / ``features`` (ArcFace's embedding, 112 px only) are not used and stay as
    loaded."""

    def __init__(self, net: IResNet, freeze: str = "none") -> None:
        super().__init__()
        self.net = net
        self.expression = nn.Linear(CHANNELS, N_CLASSES)
        self.va = nn.Linear(CHANNELS, 2)
        self.n_frozen = 0 if freeze == "none" else PARTS.index(freeze) + 1
        self.frozen = [m for part in PARTS[: self.n_frozen] for m in part_modules(net, part)]
        for m in [*self.frozen, net.fc, net.features]:
            for p in m.parameters():
                p.requires_grad_(False)
        # state that never changes during fine-tuning: rebuilt from the start weights on resume, not saved
        names = {id(m): n for n, m in net.named_children()}
        self.fixed_prefixes = tuple(f"net.{names[id(m)]}." for m in [*self.frozen, net.fc, net.features])

    def train(self, mode: bool = True) -> BackboneNet:
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def parts(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The network's parts in forward order, as ``IResNet.forward_map`` runs them, then ``bn2``."""
        net = self.net
        return [lambda x: net.prelu(net.bn1(net.conv1(x))), net.layer1, net.layer2, net.layer3, net.layer4, net.bn2]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen parts: (B, 3, S, S) -> their output map (the input itself when nothing is frozen)."""
        for f in self.parts()[: self.n_frozen]:
            x = f(x)
        return x

    def rest(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable parts and the heads: trunk output -> (logits (B, 8), valence-arousal (B, 2))."""
        for f in self.parts()[self.n_frozen :]:
            h = f(h)
        z = h.mean(dim=(2, 3))  # (B, 512, h, w) -> (B, 512), as extract's `pooled` rows
        return self.expression(z), torch.tanh(self.va(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) normalised RGB -> (logits (B, 8), valence-arousal (B, 2))."""
        return self.rest(self.trunk(x))

    def heads_state(self) -> dict[str, torch.Tensor]:
        """The two heads' parameters (``expression.*``, ``va.*``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("net.")}

    def changing_state(self) -> dict[str, torch.Tensor]:
        """The state fine-tuning can change (trainable parts, their BN statistics, the heads), on the CPU."""
        return cpu_state({k: v for k, v in self.state_dict().items() if not k.startswith(self.fixed_prefixes)})

    def load_changing_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`changing_state` into a network built from the same start weights and ``freeze``."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        wrong = unexpected + [k for k in missing if not k.startswith(self.fixed_prefixes)]
        if wrong:
            raise RuntimeError(f"resume state does not fit the network: {wrong[:3]}")

"""The EfficientNet module, built from a `NetworkSpec` and nothing else.

Module names are stable and readable (Keras-style) so users can tap them:
`stem`, `stages.{stage}.{block}.{expand|depthwise|se|project}`, `head`, `pool`, `classifier`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EffscaleError
from ..spec import STEM_KERNEL, STEM_STRIDE, NetworkSpec
from . import memory
from .blocks import BLOCKS
from .layers import ConvNormAct


class EfficientNet(nn.Module):
    def __init__(self, spec: NetworkSpec, num_classes: int = 1000, in_chans: int = 3, features_only: bool = False):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise EffscaleError(f"num_classes={num_classes!r} must be an integer >= 0 (0 = no classifier)")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise EffscaleError(f"in_chans={in_chans!r} must be an integer >= 1")
        self.spec = spec
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.features_only = features_only
        self.grad_checkpointing = False
        norm = dict(bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)
        self.stem = ConvNormAct(in_chans, spec.stem_channels, STEM_KERNEL, STEM_STRIDE,
                                activation=spec.activation, padding=spec.padding, **norm)
        stages: list[list[nn.Module]] = [[] for _ in spec.stages]
        for block in spec.blocks():
            stages[block.stage].append(BLOCKS[block.block](block, spec.activation, padding=spec.padding, **norm))
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self.feature_info = [{k: level[k] for k in ("num_chs", "reduction", "module")}
                             for level in spec.feature_levels()]
        self._feature_stages = {level["stage"] for level in spec.feature_levels()}
        if not features_only:
            self.head = ConvNormAct(spec.out_channels, spec.head_channels, 1, activation=spec.activation, **norm)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(spec.dropout)
            self.classifier = nn.Linear(spec.head_channels, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference TF initialisers: fan-out normal for convs, uniform(1/sqrt(fan_out)) for the classifier.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / module.out_features ** 0.5
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    @property
    def num_features(self) -> int:
        return self.spec.head_channels

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per stage while training (timm's method name).

        Backward keeps only each stage's input and re-runs the stage, for about one extra
        forward pass; eval and `torch.no_grad` are unaffected. See nn/memory.py.
        """
        self.grad_checkpointing = bool(enable)

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return memory.checkpoint_stage(stage, x) if self._checkpointing() else stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and head: the last feature map before pooling."""
        x = self.stem(x)
        if self._checkpointing():
            for stage in self.stages:
                x = memory.checkpoint_stage(stage, x)
        else:
            x = self.stages(x)
        return x if self.features_only else self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One feature map per level of `feature_info` (reductions 2, 4, 8, 16, 32)."""
        x = self.stem(x)
        features = [x] if -1 in self._feature_stages else []
        for index, stage in enumerate(self.stages):
            x = self._run_stage(stage, x)
            if index in self._feature_stages:
                features.append(x)
        return features

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_pyramid(x)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        if self.features_only:
            raise EffscaleError("a features_only model has no classifier to reset")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise EffscaleError(f"num_classes={num_classes!r} must be an integer >= 0 (0 = no classifier)")
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.spec.head_channels, num_classes) if num_classes else nn.Identity()
        if num_classes:
            bound = 1.0 / num_classes ** 0.5
            nn.init.uniform_(self.classifier.weight, -bound, bound)
            nn.init.zeros_(self.classifier.bias)

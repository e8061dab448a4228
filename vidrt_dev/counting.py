"""The activation-peak counter the slicer's tests and benchmark use: vidrt's memory tracker's live-storage
counter on its own (every device, no stages).

`peak_activation_bytes()` is a TorchDispatchMode recording every new tensor storage an op returns and its
release, so `peak` is the high-water mark of bytes allocated *inside* the block: activations only —
parameters and inputs existed before and are not counted. Works on real CPU tensors and on fake tensors
(FakeTensorMode), where it predicts the accelerator's activation peak.
"""
from __future__ import annotations

from vidrt.memory.counter import LiveCounter


class peak_activation_bytes(LiveCounter):
    def __init__(self):
        super().__init__(owner=None, device_type=None)

    @property
    def peak(self) -> int:
        return self.peak_bytes

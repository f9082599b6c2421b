"""--device auto: the CPU without asking torch when no GPU device node exists, torch's answer otherwise."""

from __future__ import annotations

from mergebench import devices


def test_auto_is_the_cpu_without_asking_torch_when_no_gpu_node_exists(monkeypatch, tmp_path):
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(1) or True)
    monkeypatch.setattr(devices, "GPU_DEVICE_NODES", (str(tmp_path / "nvidiactl"),))
    assert devices.resolve_device("auto") == "cpu" and not asked
    (tmp_path / "nvidiactl").touch()  # a node: torch decides
    assert devices.resolve_device("auto") == "cuda" and asked

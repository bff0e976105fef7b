"""The nets' training step shards each batch over all local devices (data parallel).

Two CPU devices are forced in a child process (XLA reads the flag at start-up); the same
training on one device must give the same losses, since the sharded step averages the
gradients over the whole batch exactly as the single-device step does.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")

CHILD = r"""
import json, sys
import numpy as np
import jax
from pid_export.models.nets._native import fit
from pid_export.models.nets._train import TrainConfig
from pid_export.models.nets import DEFAULT_HYPER
rng = np.random.default_rng(0)
x = rng.normal(size=(3000, 22)).astype(np.float32)
x[:, 20:] = 1.0
x[:, 17] = 0.0
x[:, 13:17] = np.nan
y = ((x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 3] > 0.5)).astype(np.int64)
cfg = TrainConfig(epochs=3, batch_size=256, learning_rate=1e-3, seed=1, progress=False)
native = fit("simplenn", dict(DEFAULT_HYPER["simplenn"]), x[:2400], y[:2400], x[2400:], y[2400:], cfg)
h = native.history
print(json.dumps({"devices": len(jax.local_devices()), "used": h.devices,
                  "train_loss": h.train_loss, "val_loss": h.val_loss}))
"""


def _run(n_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_devices_train_like_one():
    one, two = _run(1), _run(2)
    assert one["devices"] == 1 and one["used"] == 1
    assert two["devices"] == 2 and two["used"] == 2
    for a, b in zip(one["train_loss"], two["train_loss"]):
        assert b == pytest.approx(a, rel=1e-4)
    for a, b in zip(one["val_loss"], two["val_loss"]):
        assert b == pytest.approx(a, rel=1e-4)

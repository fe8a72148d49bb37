"""Checkpoints: bitwise resume, SIGKILL in the middle of a write, safetensors only."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffcore.errors import UsageError
from diffcore.training.checkpoint import FORMAT, latest_checkpoint, load_checkpoint

TRAIN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    import diffcore.training.checkpoint as ckpt
    from diffcore import get_registry
    from diffcore.testing.conformance import REFERENCE_MIXTURE, sample_mixture
    from diffcore.training import Trainer, TrainConfig

    run_dir, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "kill":  # SIGKILL ourselves after the first file of the second checkpoint is written
        real, calls = ckpt.write_file, []  # 4 files per checkpoint: model, ema, state, checksums.json
        def dying_write_file(path, data):
            real(path, data)
            calls.append(path)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt.write_file = dying_write_file
    R = get_registry()
    data = sample_mixture(REFERENCE_MIXTURE, 2000, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    trainer = Trainer(R.build("model", "mlp", shape=[2], hidden=64), R.build("objective", "dsm"),
                      R.build("process", "vp"), data,
                      TrainConfig(steps=60, batch_size=128, warmup=10, lr_decay="cosine"),
                      spec={"note": "test"})
    if mode == "resume":
        trainer.load(run_dir)
    trainer.run(run_dir=run_dir, checkpoint_every=20)
""")


def train(run_dir: Path, mode: str, script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), str(run_dir), mode], capture_output=True, text=True,
                          timeout=600)


def killed_pid(run_dir: Path) -> int:
    """The process id the lock file of ``run_dir`` names (its holder was killed)."""
    return int(json.loads((run_dir / ".lock").read_text())["pid"])


def test_sigkill_during_a_checkpoint_write_then_resume_is_bitwise_equal(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    clean = train(tmp_path / "clean", "plain", script)
    assert clean.returncode == 0, clean.stderr
    killed = train(tmp_path / "run", "kill", script)
    assert killed.returncode == -signal.SIGKILL
    # the half-written second checkpoint is not what `latest` names; the first is intact
    good = latest_checkpoint(tmp_path / "run")
    assert good.name == "step-00000020"
    # the partial write (SIGKILL runs no `finally`) and the lock file of the dead process
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == [
        ".lock", f".step-00000040.{killed_pid(tmp_path / 'run')}.tmp"]
    _, meta = load_checkpoint(good)
    assert meta["step"] == 20 and meta["spec"] == {"note": "test"}
    resumed = train(tmp_path / "run", "resume", script)  # the OS released the dead process's lock
    assert resumed.returncode == 0, resumed.stderr
    # the resumed run swept the partial write when it took the lock, and released the lock
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    final_clean = load_checkpoint(latest_checkpoint(tmp_path / "clean"))[0]
    final_resumed = load_checkpoint(latest_checkpoint(tmp_path / "run"))[0]
    for name in ("model", "ema"):
        assert final_clean[name].keys() == final_resumed[name].keys()
        for key, value in final_clean[name].items():
            assert torch.equal(value, final_resumed[name][key]), (name, key)


def test_checkpoints_are_safetensors_with_the_spec(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN.replace("steps=60", "steps=5"))
    assert train(tmp_path / "run", "plain", script).returncode == 0
    path = latest_checkpoint(tmp_path / "run")
    assert sorted(p.name for p in path.iterdir()) == ["checksums.json", "ema.safetensors", "model.safetensors",
                                                      "state.safetensors"]
    weights = load_file(path / "model.safetensors")
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    manifest = json.loads((path / "checksums.json").read_text())
    assert manifest["format"] == FORMAT and manifest["step"] == 5
    for name in ("model", "ema", "state"):
        data = (path / f"{name}.safetensors").read_bytes()
        entry = manifest["files"][f"{name}.safetensors"]
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_a_pickle_posing_as_a_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "ckpt"
    bad.mkdir()
    torch.save({"x": Exploit()}, bad / "model.safetensors")  # a pickle with the right file name
    with pytest.raises(UsageError, match=r"has no checksums\.json"):
        load_checkpoint(bad, names=("model",))
    # even with a manifest that vouches for it, it is parsed as safetensors, never unpickled
    data = (bad / "model.safetensors").read_bytes()
    (bad / "checksums.json").write_text(json.dumps({"format": FORMAT, "step": 1, "files": {"model.safetensors": {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}}))
    with pytest.raises(UsageError, match="not a readable safetensors file"):
        load_checkpoint(bad, names=("model",))
    assert not marker.exists()
    with pytest.raises(UsageError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "empty")
